"""Serving the products to people: the HTTP API (and, next, the map page) behind `geoembed serve`."""
