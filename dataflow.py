"""The production entry point: `python -m bytewax.run dataflow` (docs/operations.md).

Wires the Bytewax runtime (`flows.runtime.bytewax`) to what the composition root
(`flows.app.compose`) builds from the settings in the environment. A bad setting exits
with status 2 here, at import; a failed start-up check exits with status 2 when the flow
starts. Also prepares the process around Bytewax: the recovery directory, SIGTERM/SIGINT
handling and the exit when a dependency stays down past its deadline.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys

from flows import connections
from flows.app import compose
from flows.errors import ConfigurationError, SettingsError
from flows.pause import PauseWatch
from flows.runtime.bytewax.flow import build_flow
from flows.runtime.bytewax.lifecycle import Lifecycle
from flows.runtime.bytewax.modes import input_and_output
from flows.runtime.bytewax.preflight import Preflight
from flows.runtime.bytewax.recovery import (
    cluster_place,
    drop_recovery_config,
    ensure_recovery_dir,
    hold_running_lock,
    recovery_dir_from,
)
from flows.runtime.memory import pin_mmap_threshold
from flows.settings import Settings
from flows.telemetry.logs import set_identity, setup_logging
from flows.telemetry.progress import ProgressReporter

try:
    settings = Settings.from_env()
except SettingsError as exc:
    print(f"error: bad setting {exc}", file=sys.stderr)
    sys.exit(2)

setup_logging(settings.log_level)
lifecycle = Lifecycle()
running = "bytewax.run" in sys.orig_argv  # not when drawn by bytewax.visualize or imported by tests
process_id = cluster_place(sys.argv[1:], os.environ).process_id if running else 0
# the pod's name in Kubernetes (its HOSTNAME), so two pods on one node never share an identity
host = os.environ.get("HOSTNAME") or socket.gethostname()
identity = f"{host}-p{process_id}"
# every line, the first included, says which service, host and process wrote it
set_identity(service="enrichment-dataflow", host=host, process=process_id)
if running:
    logging.getLogger("dataflow").info(
        "starting",
        extra={
            "fields": {
                "guarantee": settings.processing_guarantee,
                "connections": connections.modes(settings),
                "settings": settings.describe(),
            }
        },
    )
recovery_dir = None

if running:
    pin_mmap_threshold()  # RSS stays flat while the lookup caches churn (flows/runtime/memory.py)
    recovery_dir = recovery_dir_from(sys.argv[1:], os.environ)
    if recovery_dir is not None and settings.exactly_once:
        # exactly-once resumes from the group's committed offsets; Bytewax's recovery would
        # end this flow at once (flows/runtime/bytewax/recovery.py, drop_recovery_config)
        if not drop_recovery_config():
            print(
                "error: PROCESSING_GUARANTEE=exactly-once keeps its position in CONSUMER_GROUP and can't run "
                "with a recovery directory here: remove -r / BYTEWAX_RECOVERY_DIRECTORY",
                file=sys.stderr,
            )
            sys.exit(2)
        logging.getLogger("dataflow").info(
            "exactly-once: the recovery directory is not used (the consumer group's committed offsets are the "
            "position)",
            extra={"fields": {"recovery_directory": str(recovery_dir)}},
        )
    elif recovery_dir is not None:
        try:
            ensure_recovery_dir(recovery_dir, settings.recovery_partitions, cluster_place(sys.argv[1:], os.environ))
            running_lock = hold_running_lock(recovery_dir)  # `ops rewind` is refused while it is held
        except (OSError, ValueError, ConfigurationError) as exc:
            print(f"error: recovery directory: {exc}", file=sys.stderr)
            sys.exit(2)
    lifecycle.install_signal_handlers(settings.shutdown_timeout_seconds)
    atexit.register(lifecycle.mark_done)

# exactly-once: a process paused past the group's session timeout may be a zombie (flows/pause.py)
pauses = PauseWatch(settings.kafka_session_timeout_ms / 2000).start() if running and settings.exactly_once else None
app = compose.build(settings, give_up=lifecycle.give_up if running else None, pauses=pauses)
preflight = Preflight(settings, on_start=lifecycle.started.set)
source, sink = input_and_output(app, preflight, lifecycle, identity, recovery=recovery_dir is not None)

flow = build_flow(
    app,
    source=source,
    sink=sink,
    enricher=lambda: app.enricher(preflight.limits(), "enrichment", listen=True),
    reporter=ProgressReporter(settings.progress_interval_seconds, app.metrics, [app.flush_logs]),
)
