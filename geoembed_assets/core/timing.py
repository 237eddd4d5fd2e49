"""Time spent inside asset bodies (our code, our I/O included), counted per process.

The main job runs in-process (``AssetRunner``): after each run it takes the seconds counted here, and
what remains of the run's wall time is Dagster's (run set-up, events, the IO and partition machinery).
Every pipeline makes its assets with ``timed_asset`` instead of ``dg.asset``."""

from __future__ import annotations

import functools
import inspect
import threading
import time
from typing import Any, Callable

import dagster as dg

_lock = threading.Lock()
_body_seconds = 0.0


def _count(seconds: float) -> None:
    global _body_seconds
    with _lock:
        _body_seconds += seconds


def take_body_seconds() -> float:
    """Seconds spent in asset bodies since the last call (then starts again from zero)."""
    global _body_seconds
    with _lock:
        seconds, _body_seconds = _body_seconds, 0.0
    return seconds


def timed_body(fn: Callable) -> Callable:
    """``fn`` with its time counted (a generator's: the time spent producing each item)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any):
            items = fn(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    _count(time.perf_counter() - start)
                yield item
        return generator

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _count(time.perf_counter() - start)
    return call


def timed_asset(**defaults: Any) -> Callable[..., Callable[[Callable], dg.AssetsDefinition]]:
    """Like ``functools.partial(dg.asset, **defaults)``, with the body's time counted (``timed_body``)."""
    def asset(**kwargs: Any) -> Callable[[Callable], dg.AssetsDefinition]:
        make = dg.asset(**{**defaults, **kwargs})
        return lambda fn: make(timed_body(fn))
    return asset
