"""An archive of every outcome as JSON lines in local files, one file per worker: the
message each record became (key and value in base64) and its history row's status."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec

from flows.core.model import Outcome

_ENC = msgspec.json.Encoder()


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


class JsonlArchive:
    """Appends one line per outcome to `<directory>/<client>.jsonl`; flush fsyncs."""

    def __init__(self, directory: Path, client: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(directory / f"{client}.jsonl", "ab")  # noqa: SIM115 - closed by close()

    def write(self, items: Sequence[Outcome]) -> None:
        """Append the outcomes' lines."""
        self._file.write(b"".join(_ENC.encode({
            "source": r.record.coordinates, "status": r.history.status, "code": r.history.error_code,
            "topic": r.message.topic, "key": _b64(r.message.key), "value": _b64(r.message.value)}) + b"\n"
            for r in items))

    def flush(self) -> list[Outcome]:
        """Make the lines durable; nothing to re-route."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return []

    def close(self) -> None:
        """Close the file."""
        self._file.close()
