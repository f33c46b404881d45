"""Which scylla-driver errors are which."""

from __future__ import annotations

from cassandra import CoordinationFailure, InvalidRequest, OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.cluster import NoHostAvailable

from flows.retry import Kind, network_kind

_TRANSIENT_NAMES = frozenset(
    {
        "OverloadedErrorMessage",
        "IsBootstrappingErrorMessage",
        "ConnectionException",
        "ConnectionShutdown",
        "ConnectionBusy",
    }
)


def classify(exc: BaseException) -> Kind:
    """No host, timeouts, unavailable or overloaded nodes may pass; a request the server
    refuses for what it holds (`InvalidRequest`: a row over its largest mutation) is the
    record's; the rest (syntax, permissions) is fatal."""
    if isinstance(exc, NoHostAvailable | OperationTimedOut | Unavailable | ReadTimeout | WriteTimeout):
        return Kind.RETRIABLE
    if isinstance(exc, CoordinationFailure):  # includes overloaded write/read failures
        return Kind.RETRIABLE
    if type(exc).__name__ in _TRANSIENT_NAMES:
        return Kind.RETRIABLE
    if isinstance(exc, InvalidRequest):
        return Kind.RECORD
    return network_kind(exc)
