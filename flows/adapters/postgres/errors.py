"""Which psycopg errors are which."""

from __future__ import annotations

import psycopg
import psycopg_pool

from flows.retry import Kind, network_kind


def classify(exc: BaseException) -> Kind:
    """A connection lost or refused, a pool timeout, a server shutting down may pass; a value
    the database refuses (SQLSTATE class 22, or text Python can't encode) is the record's."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
        return Kind.RETRIABLE
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return Kind.RETRIABLE
    if isinstance(exc, psycopg.DataError | UnicodeEncodeError):
        return Kind.RECORD
    return network_kind(exc)
