"""Retries for transient failures, a clear immediate failure for everything else.

Every asset that reads or writes outside its process carries ``TRANSIENT_RETRY``: a database or
object store that is briefly unavailable gets the step re-run after 5 s, 10 s, 20 s (+-jitter).
``fails_clearly`` makes every other error (bad input, wrong credentials, a missing upstream) a
``dg.Failure`` that bypasses the policy, with a message naming what failed.
"""

import functools
import os
from typing import Callable, TypeVar

import dagster as dg

from geoembed.core.transient import is_transient

# GEOEMBED_RETRY_DELAY_SECONDS: the first delay (default 5 s; tests shorten it).
RETRY_DELAY_ENV_VAR = "GEOEMBED_RETRY_DELAY_SECONDS"
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=3, delay=float(os.environ.get(RETRY_DELAY_ENV_VAR) or 5),
                                 backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

F = TypeVar("F", bound=Callable)


def fails_clearly(fn: F) -> F:
    """Let transient errors reach the retry policy; turn every other error into a permanent Failure."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except dg.Failure as exc:
            if exc.allow_retries:
                # Our own Failures describe conditions a retry cannot change (missing upstream, bad input).
                raise dg.Failure(exc.description, metadata=exc.metadata, allow_retries=False) from exc
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            raise dg.Failure(f"{type(exc).__name__}: {exc}", allow_retries=False) from exc

    return wrapper  # type: ignore[return-value]
