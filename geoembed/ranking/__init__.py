"""Per-station image ranking from pairwise annotations (the USGS flow-photo pipeline, rebuilt): filters,
the train/validation split of annotated pairs, and the ranking losses. Pure logic, no Dagster."""
