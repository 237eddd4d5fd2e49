"""Where products are written and served from: Zarr stores, PostgreSQL (pgvector) tables, search."""
