"""Which failures are worth retrying: the database or object store briefly unavailable, not bad input.

A retry only helps when the same request can succeed later: a refused or dropped connection, a
timeout, a server shutting down or overloaded, an object store throttling. Everything else (bad
rasters, wrong credentials, a missing database, a programming error) fails the same way again.
"""

from __future__ import annotations

import errno

import psycopg

# SQLSTATE classes/codes that say "try again later": connection exceptions (08), insufficient
# resources (53), operator intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
# connect now), serialization failure and deadlock (40001, 40P01).
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P01", "57P02", "57P03", "40001", "40P01")
# Object stores: throttling and server-side errors (S3 error codes and HTTP statuses).
# libpq reports a refused login without a SQLSTATE: the server's FATAL message tells a server that is
# busy or restarting (retry) from one that said no (wrong password, no such database or role).
_TRANSIENT_FATAL_MESSAGES = ("the database system is starting up", "the database system is shutting down",
                             "the database system is in recovery mode", "the database system is not yet accepting",
                             "too many clients", "remaining connection slots are reserved",
                             "terminating connection due to administrator command")
_TRANSIENT_S3_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
                       "RequestTimeTooSkewed", "500", "502", "503", "504"}
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE}


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.OperationalError):
        state = getattr(exc, "sqlstate", None)
        if state:
            return state.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
        # A failed connection: never reached (refused, reset, timed out) is transient; a server that
        # answered FATAL refused us, unless it said it is busy or restarting.
        message = str(exc)
        return "FATAL:" not in message or any(m in message for m in _TRANSIENT_FATAL_MESSAGES)
    if isinstance(exc, psycopg.Error):
        state = getattr(exc, "sqlstate", None)
        return bool(state) and state.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:  # botocore is present with dagster-aws / s3fs
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover
        boto = None
    if boto is not None:
        if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectionClosedError, boto.ReadTimeoutError,
                            boto.ConnectTimeoutError)):
            return True
        if isinstance(exc, boto.ClientError):
            error = exc.response.get("Error", {})
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            return error.get("Code") in _TRANSIENT_S3_CODES or status in _TRANSIENT_S3_CODES
    try:
        import aiohttp
    except ImportError:  # pragma: no cover
        aiohttp = None
    if aiohttp is not None and isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return False


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is a temporary outage worth retrying."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _is_transient_one(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False
