"""Log lines (flows/telemetry/logs.py): one JSON object each, with the process's identity
and, on a worker's thread, the worker's index."""

from __future__ import annotations

import io
import json
import logging
import threading

from flows.telemetry import logs


def test_lines_carry_service_process_and_worker() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.Logger("test.identity")
    log.addHandler(handler)
    logs.set_identity(service="enrichment-dataflow", host="pod-0", process=3)
    try:

        def worker() -> None:
            logs.bind_worker(1)
            log.warning("from a worker", extra={"fields": {"records": 5}})

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        log.warning("from the main thread")
    finally:
        logs._IDENTITY.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["service"] == "enrichment-dataflow" and first["process"] == 3 and first["host"] == "pod-0"
    assert first["worker"] == 1 and first["records"] == 5 and first["msg"] == "from a worker"
    assert second["process"] == 3 and "worker" not in second
