"""The production entry point: `python -m bytewax.run dataflow` (README, Running it).

Wires the steps of `flows.pipeline` to Kafka, PostgreSQL and ScyllaDB from the settings
in the environment. A bad setting exits with status 2 here, at import; unreachable
dependencies or topics that break the size rule exit with status 2 when the flow starts.
Also prepares the process around Bytewax's runtime (flows.lifecycle): the recovery
directory, SIGTERM/SIGINT handling and the exit when a dependency stays down past its
deadline.
"""

from __future__ import annotations

import atexit
import os
import sys

from flows import lifecycle, retry
from flows.delivery import Delivery, DeliverySink
from flows.failurelog import FailureLog
from flows.history import HistoryWriter
from flows.kafka_io import KafkaInput, KafkaWriter
from flows.logs import setup_logging
from flows.memory import pin_mmap_threshold
from flows.pg import PgCustomerLookup
from flows.pipeline import build_flow
from flows.preflight import Preflight
from flows.settings import Settings, SettingsError
from flows.stats import ProgressReporter

try:
    settings = Settings.from_env()
except SettingsError as exc:
    print(f"error: bad setting {exc}", file=sys.stderr)
    sys.exit(2)

setup_logging(settings.log_level)

if "bytewax.run" in sys.orig_argv:
    # only when run as the dataflow (not when drawn by bytewax.visualize or imported by tests)
    pin_mmap_threshold()  # RSS stays flat while the customer cache churns (flows/memory.py)
    recovery_dir = lifecycle.recovery_dir_from(sys.argv[1:], os.environ)
    if recovery_dir is not None:
        try:
            place = lifecycle.cluster_place(sys.argv[1:], os.environ)
            lifecycle.ensure_recovery_dir(recovery_dir, settings.recovery_partitions, place)
        except (OSError, ValueError, lifecycle.RecoveryLayoutError) as exc:
            print(f"error: recovery directory: {exc}", file=sys.stderr)
            sys.exit(2)
    lifecycle.install_signal_handlers(settings.shutdown_timeout_seconds)
    atexit.register(lifecycle.mark_done)
    retry.set_give_up(lifecycle.give_up)

preflight = Preflight(settings)
failures = FailureLog()
fallbacks = FailureLog(first="delivery fallback", summary="delivery fallbacks")


def delivery(worker: int) -> Delivery:
    limits = preflight.limits()
    writer = KafkaWriter(settings, f"enrichment-deliver-{worker}", max_bytes=max(limits.output, limits.failure),
                         batch_bytes=min(limits.output, limits.failure))
    return Delivery(writer, HistoryWriter(settings), settings.failure_topic, limits, fallbacks)


flow = build_flow(
    settings,
    source=KafkaInput(settings, preflight.partitions),
    sink=DeliverySink(delivery),
    lookup_factory=lambda: PgCustomerLookup(settings),
    limits=preflight.limits,
    failures=failures,
    reporter=ProgressReporter(settings.progress_interval_seconds, flushers=[failures.flush, fallbacks.flush]),
)
