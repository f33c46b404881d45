"""JSON lines on stderr: one object per log record, with any `extra={"fields": {...}}`
merged in. Never pass payloads or secrets as fields."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any

import msgspec
from typing_extensions import override

_ENCODER = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg and the record's fields."""

    @override
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
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
