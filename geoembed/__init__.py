"""geoembed: geospatial embedding data products (pure logic, no Dagster)."""
