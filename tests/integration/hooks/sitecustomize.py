"""Loaded by every Python process started with this folder first on PYTHONPATH: the fault
matrix's "error in an output step". With INJECT_OUTPUT_ERROR_AT=N, the N-th flush of the
dead-letter output in the process raises (after the round's enriched messages and dead
letters were handed to Kafka, inside exactly-once's transaction), once: the file named by
INJECT_OUTPUT_ERROR_MARKER is created then, and no process injects while it exists."""

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
