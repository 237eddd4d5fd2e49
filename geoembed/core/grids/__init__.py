"""Spatial grids that partition products and index their rows."""
