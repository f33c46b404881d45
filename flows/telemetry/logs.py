"""JSON lines on stderr: one object per log record, with any `extra={"fields": {...}}`
merged in. Never pass payloads or secrets as fields."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
from typing import Any

import msgspec
from typing_extensions import override

_ENCODER = msgspec.json.Encoder(enc_hook=str)
# who logs: the service and process (set once at start) and, on a worker's thread, its index
_IDENTITY: dict[str, Any] = {}
_WORKERS: dict[int, int] = {}  # by thread identifier: Bytewax's threads lose threading.local


def set_identity(**fields: Any) -> None:
    """Fields every line of this process carries: `service`, `host`, `process`, ..."""
    _IDENTITY.update(fields)


def bind_worker(index: int) -> None:
    """This thread is worker `index`: its lines carry `worker`."""
    _WORKERS[threading.get_ident()] = index


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg and the record's fields."""

    @override
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_IDENTITY,
        }
        worker = _WORKERS.get(record.thread or 0)
        if worker is not None:
            doc["worker"] = worker
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(doc).decode("utf-8", "replace")


def setup_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the whole process; client libraries at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # client libraries are chatty at INFO; their warnings still show
    for name in ("cassandra", "kafka"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
