"""The production entry point: `python -m bytewax.run dataflow`.

Wires the steps of `flows.pipeline` to Kafka, PostgreSQL and ScyllaDB from the settings
in the environment (README, Configuration). A bad setting exits with status 2 here, at
import; unreachable dependencies exit with status 2 when the flow starts.
"""

from __future__ import annotations

import functools
import sys

from flows.history import HistorySink
from flows.kafka_io import KafkaInput, KafkaOutput
from flows.logs import setup_logging
from flows.pg import PgCustomerLookup
from flows.pipeline import build_flow
from flows.preflight import checked_partitions
from flows.settings import Settings, SettingsError

try:
    settings = Settings.from_env()
except SettingsError as exc:
    print(f"error: bad setting {exc}", file=sys.stderr)
    sys.exit(2)

setup_logging(settings.log_level)

flow = build_flow(
    settings,
    source=KafkaInput(settings, functools.cache(lambda: checked_partitions(settings))),
    success_sink=KafkaOutput(settings),
    failure_sink=KafkaOutput(settings),
    history_sink=HistorySink(settings),
    lookup_factory=lambda: PgCustomerLookup(settings),
)
