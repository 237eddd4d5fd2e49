"""Benchmarks: each prints its figures beside baselines measured in the same run and writes them as JSON."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "bench-results"  # git ignores it


def write_results(name: str, results: dict) -> Path:
    """Write a benchmark's figures to bench-results/<name>.json and say where."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(results, indent=1, default=float))
    print(f"written {out}")
    return out
