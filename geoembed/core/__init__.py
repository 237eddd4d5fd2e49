"""The machinery every pipeline shares (no Dagster here): grids, rasters, lineage, inference batching,
evaluation, pictures, landing listings, failure classification, and the sinks (Zarr, PostgreSQL with
pgvector, search)."""
