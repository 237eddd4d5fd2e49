"""Progress of a step that works through parts (regions, tiles, chips, stations): one line per part
with how many parts and items are done and the rate, so long scans never run silent."""

from __future__ import annotations

import time
from typing import Callable


class Progress:
    """Counts parts and items as a step goes, and says so after each part.

    ``say``: where lines go (a Dagster log, print). ``unit``: what the items are (cells, chips, rows)."""

    def __init__(self, what: str, total_parts: int, say: Callable[[str], None], unit: str = "cells",
                 part_label: str = "region"):
        self.what, self.total_parts, self.say, self.unit, self.part_label = what, total_parts, say, unit, part_label
        self.parts = 0
        self.items = 0
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def rate(self, items: int | None = None, seconds: float | None = None) -> float:
        """Items per second (``items`` over ``seconds``; default: all items over the time so far)."""
        return (self.items if items is None else items) / max(self.seconds if seconds is None else seconds, 1e-9)

    def done(self, part: str, items: int, rate: float | None = None, suffix: str = "") -> None:
        """One more part of ``items`` items is done (``rate``: a rate to show instead of the overall one)."""
        self.parts += 1
        self.items += items
        shown = self.rate() if rate is None else rate
        self.say(f"{self.what}: {self.part_label} {part} ({self.parts}/{self.total_parts}), {self.items:,} "
                 f"{self.unit}, {shown:,.0f} {self.unit}/s{suffix}")
