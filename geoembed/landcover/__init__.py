"""The H3 land-cover product: categorical rasters -> windows around H3 cells -> a triplet-trained CNN ->
one embedding per cell (VectorGeo's pipeline, rebuilt)."""
