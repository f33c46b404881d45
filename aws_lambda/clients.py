"""The connections of one Lambda container: built on the first invocation (never at import,
so a cold start with a bad setting fails an invocation with a readable error rather than the
init phase), reused by every later invocation, closed when the process exits.

Lambda freezes a container between invocations and reuses it, so the PostgreSQL pool, the
CQL session, the Kafka producer and the customer cache all live here, one of each per
container (a container runs one invocation at a time).
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from flows.delivery import Delivery
from flows.enrich import CustomerCache, Enricher
from flows.failurelog import FailureLog
from flows.history import HistoryWriter
from flows.kafka_io import KafkaWriter
from flows.logs import setup_logging
from flows.pg import PgCustomerLookup
from flows.preflight import PreflightError, check_kafka, check_postgres, topic_sizes
from flows.settings import Settings
from flows.sizes import ADDED_ROOM_BYTES, TopicLimits, value_fits

log = logging.getLogger(__name__)

CLIENT_NAME = "enrichment-lambda"


@dataclass
class Clients:
    settings: Settings
    enricher: Enricher
    history: HistoryWriter
    writer: KafkaWriter
    limits: TopicLimits
    failures: FailureLog
    fallbacks: FailureLog

    @classmethod
    def build(cls, settings: Settings) -> Clients:
        """Check the outputs and the customers table exist and the topics are sized for
        MAX_VALUE_BYTES (a clear error now beats a refused write later), then open every
        client; on failure close what was opened."""
        check_kafka(settings, [settings.output_topic, settings.failure_topic])
        limits = lambda_limits(settings)
        check_postgres(settings)
        lookup = PgCustomerLookup(settings, name=CLIENT_NAME)
        opened: list[Callable[[], None]] = [lookup.close]
        try:
            history = HistoryWriter(settings)  # creates the keyspace and table when missing
            opened.append(history.close)
            writer = new_writer(settings, limits)
        except BaseException:
            for close in reversed(opened):
                _best_effort(close)
            raise
        cache = CustomerCache(settings.cache_ttl_seconds, settings.cache_negative_ttl_seconds,
                              settings.cache_max_size, settings.cache_negative_max_size)
        failures = FailureLog()
        enricher = Enricher(lookup, cache, settings.output_topic, settings.failure_topic,
                            settings.lookup_batch_size, limits=limits, failures=failures)
        return cls(settings, enricher, history, writer, limits, failures,
                   FailureLog(first="delivery fallback", summary="delivery fallbacks"))

    def delivery(self) -> Delivery:
        return Delivery(self.writer, self.history, self.settings.failure_topic, self.limits, self.fallbacks)

    def renew_writer(self) -> None:
        """A fresh producer after a failed write: the old one may still hold messages of the
        failed batch, whose late acknowledgements must not count for the next batch. They
        are dropped with it; Lambda retries the whole batch."""
        self.writer = new_writer(self.settings, self.limits)

    def close(self) -> None:
        for close in (self.writer.close, self.history.close, self.enricher.lookup.close):
            _best_effort(close)


def lambda_limits(settings: Settings) -> TopicLimits:
    """The output and failure topics' sizes. The Lambda can't know every topic its event
    source mapping reads, so each must take a value of MAX_VALUE_BYTES plus what the
    pipeline adds; a record larger than that still gets through (flows.delivery)."""
    sizes = topic_sizes(settings, {"OUTPUT_TOPIC": settings.output_topic, "FAILURE_TOPIC": settings.failure_topic})
    need = value_fits(settings.max_value_bytes) + ADDED_ROOM_BYTES
    small = [f"{s.describe()}, needs {need} (a value of MAX_VALUE_BYTES={settings.max_value_bytes} plus "
             f"{ADDED_ROOM_BYTES} for what the pipeline adds)" for s in sizes.values() if s.max_bytes < need]
    if small:
        raise PreflightError("topic sizes do not fit: " + "; ".join(small))
    return TopicLimits(output=sizes["OUTPUT_TOPIC"].max_bytes, failure=sizes["FAILURE_TOPIC"].max_bytes)


def new_writer(settings: Settings, limits: TopicLimits) -> KafkaWriter:
    return KafkaWriter(settings, CLIENT_NAME, max_bytes=max(limits.output, limits.failure),
                       batch_bytes=min(limits.output, limits.failure))


def _best_effort(close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:  # noqa: BLE001 - closing is best effort (at exit, or after a failed start)
        log.exception("closing a client failed")


class ClientHolder:
    """Lazily built, process-wide `Clients`; `close` runs at exit (registered once)."""

    def __init__(self, build: Callable[[Settings], Clients] = Clients.build,
                 settings: Callable[[], Settings] = Settings.from_env) -> None:
        self._build = build
        self._settings = settings
        self._clients: Clients | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    @property
    def built(self) -> bool:
        return self._clients is not None

    def get(self) -> Clients:
        with self._lock:
            if self._clients is None:
                settings = self._settings()
                setup_logging(settings.log_level)
                self._clients = self._build(settings)
                log.info("clients ready", extra={"fields": {"settings": settings.describe()}})
            return self._clients

    def close(self) -> None:
        """Close and forget the clients; the next `get` builds new ones from the environment."""
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is not None:
            clients.close()
