"""Dagster machinery every pipeline's assets share: retry policy and clear failures, the executor
choice, and the runner behind `geoembed run`."""
