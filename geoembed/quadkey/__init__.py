"""Quadkey image chips (IMAGESIM, rebuilt): imagery cut into web-mercator tiles named by quadkey, a no-data
index, multilabel targets from labelled polygons, and the classifier used as a feature extractor."""
