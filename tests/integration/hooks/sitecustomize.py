"""Loaded by every Python process started with this folder first on PYTHONPATH: the fault
matrix's "error in an output step". With INJECT_OUTPUT_ERROR_AT=N, the N-th flush of the
dead-letter output in the process raises (after the round's enriched messages and dead
letters were handed to Kafka, inside exactly-once's transaction), once: the file named by
INJECT_OUTPUT_ERROR_MARKER is created then, and no process injects while it exists.

And a batch run held in the middle of its input while the fault is put in place: with
INJECT_SLOW_US_PER_RECORD=N, each round of the outputs first waits N microseconds per record,
until the file named by INJECT_SLOW_UNTIL exists (the fault is in: full speed from there)."""

import os

_AT = os.environ.get("INJECT_OUTPUT_ERROR_AT")
_MARKER = os.environ.get("INJECT_OUTPUT_ERROR_MARKER", "")

if _AT and _MARKER and not os.path.exists(_MARKER):
    from flows.adapters.kafka import outputs as _outputs

    _flush = _outputs.DeadLetters.flush
    _calls = [0]

    def _failing_flush(self):  # type: ignore[no-untyped-def]
        _calls[0] += 1
        if _calls[0] == int(_AT) and not os.path.exists(_MARKER):
            open(_MARKER, "w").close()  # noqa: SIM115 - a marker, empty
            raise RuntimeError("injected: the dead-letter output failed")
        return _flush(self)

    _outputs.DeadLetters.flush = _failing_flush

_SLOW = os.environ.get("INJECT_SLOW_US_PER_RECORD")
_UNTIL = os.environ.get("INJECT_SLOW_UNTIL", "")

if _SLOW and _UNTIL:
    import time as _time

    from flows.app import outputs as _app_outputs

    _write = _app_outputs.Delivery.write

    def _slow_write(self, outcomes):  # type: ignore[no-untyped-def]
        if not os.path.exists(_UNTIL):
            _time.sleep(len(outcomes) * int(_SLOW) / 1e6)
        return _write(self, outcomes)

    _app_outputs.Delivery.write = _slow_write
