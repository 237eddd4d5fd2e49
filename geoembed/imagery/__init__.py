"""The MGRS-tile imagery product: Sentinel-2 scenes -> chips on each tile's 10 m grid -> chip embeddings
(our self-supervised encoder or Clay v1.5) -> change over time, Clay-layout GeoParquet, chip search
(the SageMaker GeoFM and Clay pipelines, rebuilt)."""
