"""The composition root: from the settings, the lookups, the outputs and the telemetry that
both runtimes (the Bytewax dataflow and the Lambda handler) run. Adding a lookup or an
output is an adapter, one entry in `lookups` or `outputs` below, and its settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from flows.adapters.kafka.committer import OffsetCommitter
from flows.adapters.kafka.group import GroupReader
from flows.adapters.kafka.outputs import DeadLetters, EnrichedMessages
from flows.adapters.kafka.transactions import Transactions
from flows.adapters.kafka.writer import KafkaWriter
from flows.adapters.postgres.changes import ChangeListener
from flows.adapters.postgres.customers import PgCustomerLookup
from flows.adapters.registry.client import registry_client
from flows.adapters.registry.readers import FramedReader
from flows.adapters.registry.writers import FramedWriter
from flows.adapters.scylla.writer import HistoryOutput, HistoryWriter
from flows.app.outputs import Delivery, Output, Progress, Shared, enriched, everything, failed
from flows.core.cache import Inbox, TtlCache
from flows.core.decode import decode_framed, decode_record
from flows.core.enrich import Enricher, Lookup, Resolver
from flows.core.model import Code, Decoded, Failure, Outcome, SourceRecord
from flows.core.outcome import internal_error
from flows.core.sizes import TopicLimits
from flows.errors import DependencyError
from flows.pause import PauseWatch
from flows.retry import GiveUp, Retries
from flows.settings import Settings
from flows.telemetry.failurelog import FailureLog
from flows.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class App:
    """What every worker of a process (or a Lambda container) builds its parts from."""

    settings: Settings
    metrics: Metrics
    retries: Retries
    failures: FailureLog = field(default_factory=FailureLog)
    fallbacks: FailureLog = field(
        default_factory=lambda: FailureLog(first="delivery fallback", summary="delivery fallbacks")
    )
    pauses: PauseWatch | None = None  # exactly-once: pauses of the process (a zombie must not write)
    _listener: ChangeListener | None = field(default=None, init=False, repr=False)
    _listener_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _registry: Any = field(default=None, init=False, repr=False)
    _reader: FramedReader | None = field(default=None, init=False, repr=False)
    _writer: FramedWriter | None = field(default=None, init=False, repr=False)
    _formats_lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def registry(self) -> Any:
        """The process's Schema Registry client (its schema cache shared by every worker)."""
        with self._formats_lock:
            if self._registry is None:
                self._registry = registry_client(self.settings)
            return self._registry

    def reader(self) -> FramedReader | None:
        """INPUT_FORMAT's reader (None for json), made on first use."""
        s = self.settings
        if s.input_format == "json":
            return None
        if self._reader is None:  # once made, every batch reads it without the lock
            with self._formats_lock:
                if self._reader is None:
                    self._reader = FramedReader(s.input_format, self.registry(), s.input_topic, self.retries)
        return self._reader

    def writer(self) -> FramedWriter | None:
        """OUTPUT_FORMAT's writer (None for json), made on first use."""
        s = self.settings
        if s.output_format == "json":
            return None
        if self._writer is None:
            with self._formats_lock:
                if self._writer is None:
                    self._writer = FramedWriter(
                        s.output_format, self.registry(), s.output_topic, s.subject_name_strategy, self.retries
                    )
        return self._writer

    def decode(self, records: Sequence[SourceRecord]) -> list[Decoded | Failure]:
        """Decode and validate a batch in INPUT_FORMAT."""
        reader = self.reader()
        return decode_batch(records, self.settings.max_value_bytes, reader.read if reader is not None else None)

    def lookups(self, client: str) -> list[Resolver]:
        """The enrichment's lookups, each with its own cache (one set per worker); with
        CACHE_INVALIDATION=notify each cache also hears of the customers that change."""
        resolver = customers(self.settings, PgCustomerLookup(self.settings, self.retries, self.metrics, name=client))
        listener = self.change_listener()
        if listener is not None:
            resolver.changes = Inbox()
            listener.subscribe(resolver.changes)
        return [resolver]

    def change_listener(self) -> ChangeListener | None:
        """The process's listener for customer changes (None with CACHE_INVALIDATION=ttl),
        made on first use."""
        if self.settings.cache_invalidation != "notify":
            return None
        with self._listener_lock:
            if self._listener is None:
                m = self.metrics
                self._listener = ChangeListener(
                    self.settings, on_reset=m.cache_reset, on_changes=m.add_cache_invalidations
                )
            return self._listener

    def outputs(self, limits: TopicLimits | None, client: str) -> list[Output]:
        """The flow's outputs; history first, so its rows are written while the messages handed
        over before them travel."""
        s = self.settings

        def history(shared: Shared) -> HistoryWriter:
            return shared.get(
                "cql", lambda: HistoryWriter(s, self.retries, self.metrics, self.pauses), HistoryWriter.close
            )

        def kafka(shared: Shared) -> KafkaWriter:
            return self.kafka(shared, limits, client)

        return [
            Output("history", everything, lambda sh: HistoryOutput(history(sh))),
            Output(
                "enriched",
                enriched,
                lambda sh: EnrichedMessages(
                    kafka(sh), s.failure_topic, self.metrics, self.fallbacks, encode=self._encode()
                ),
                transactional=True,
            ),
            Output(
                "failed",
                failed,
                lambda sh: DeadLetters(
                    kafka(sh),
                    s.failure_topic,
                    limits.failure if limits else None,
                    self.retries,
                    self.metrics,
                    self.fallbacks,
                ),
                transactional=True,
            ),
        ]

    def _encode(self) -> Callable[[bytes], bytes] | None:
        writer = self.writer()
        return writer.write if writer is not None else None

    def kafka(self, shared: Shared, limits: TopicLimits | None, client: str) -> KafkaWriter:
        """A worker's producer, shared by its Kafka outputs; transactional in exactly-once mode,
        with a transactional.id that a restart of the same worker takes over (fencing its
        predecessor and aborting what it left open)."""
        s = self.settings
        prefix = s.transactional_id_prefix or s.consumer_group
        return shared.get(
            "kafka",
            lambda: KafkaWriter(
                s,
                client,
                max_bytes=max(limits.output, limits.failure) if limits else None,
                batch_bytes=min(limits.output, limits.failure) if limits else None,
                retries=self.retries,
                transactional_id=f"{prefix}.{client}" if s.exactly_once else None,
                topic_limits={s.output_topic: limits.output, s.failure_topic: limits.failure} if limits else None,
            ),
            KafkaWriter.close,
        )

    def enricher(self, limits: TopicLimits | None, client: str, listen: bool = False) -> Enricher:
        """A worker's enrich step; `listen`: run the change listener in the background (the
        dataflow; the Lambda drains it before each batch instead)."""
        s = self.settings
        made = Enricher(self.lookups(client), s.output_topic, s.failure_topic, limits=limits, observer=self.metrics)
        listener = self.change_listener()
        if listen and listener is not None:
            listener.start()
        return made

    def delivery(
        self,
        limits: TopicLimits | None,
        client: str,
        progress: bool = True,
        reader: GroupReader | None = None,
        depth: int = 0,
    ) -> Delivery:
        """A worker's output step; with `progress`, it also keeps the position in the group
        (the Lambda leaves that to its event source mapping); `depth` batches may await their
        acknowledgements while the next is handed over."""
        s = self.settings
        keeper = None
        if progress and s.exactly_once:
            assert reader is not None, "exactly-once needs the worker's group reader"

            def keeper(shared: Shared) -> Progress:
                return Transactions(
                    s, self.kafka(shared, limits, client), reader, self.retries, self.metrics, pauses=self.pauses
                )
        elif progress:

            def keeper(shared: Shared) -> Progress:
                return OffsetCommitter(s, client, self.metrics)

        return Delivery.build(self.outputs(limits, client), self.metrics, progress=keeper, depth=depth)

    def process(self, records: Sequence[SourceRecord], enricher: Enricher) -> list[Outcome]:
        """Decode, validate and enrich a batch: the same code in both runtimes."""
        return self.enrich(self.decode(records), enricher)

    def enrich(self, items: Sequence[Decoded | Failure], enricher: Enricher) -> list[Outcome]:
        """Enrich a decoded batch, counting and logging its outcomes."""
        outcomes = enricher.process(items)
        self.metrics.add_results(outcomes)
        self.failures.add(outcomes)
        return outcomes

    def flush_logs(self) -> None:
        """Write the aggregated failure lines now."""
        self.failures.flush()
        self.fallbacks.flush()


def customers(settings: Settings, lookup: Lookup) -> Resolver:
    """The customers lookup: the `customer` member, by `customer_id`, `customer_not_found`
    when there is no row."""
    s = settings
    return Resolver(
        name="customers",
        member="customer",
        key=lambda event: event.customer_id,
        field="$.customer_id",
        not_found=Code.CUSTOMER_NOT_FOUND,
        lookup=lookup,
        cache=TtlCache(s.cache_ttl_seconds, s.cache_negative_ttl_seconds, s.cache_max_size, s.cache_negative_max_size),
        batch_size=s.lookup_batch_size,
    )


def decode_batch(
    records: Sequence[SourceRecord], max_bytes: int, read: Callable[[bytes], bytes] | None = None
) -> list[Decoded | Failure]:
    """Decode each record (JSON, or through a format's `read`); `decode_record` never
    raises, and this is the net under a bug. A dependency the format needs that stays away
    (the Schema Registry) is not the record's: it is raised."""
    out: list[Decoded | Failure] = []
    for record in records:
        try:
            out.append(decode_record(record, max_bytes) if read is None else decode_framed(record, max_bytes, read))
        except DependencyError:
            raise
        except Exception as exc:  # noqa: BLE001 - the net under a bug, per record
            log.exception("internal error decoding %s", record.coordinates)
            out.append(internal_error(record, exc))
    return out


def build(
    settings: Settings,
    give_up: GiveUp | None = None,
    registry: CollectorRegistry | None = REGISTRY,
    pauses: PauseWatch | None = None,
) -> App:
    """The process's App: its metrics (in `registry`), its retry policy and log aggregation;
    `pauses`: exactly-once's watch for pauses of the process."""
    metrics = Metrics(registry)
    return App(settings, metrics, Retries(settings.retry_deadline_seconds, give_up, observer=metrics), pauses=pauses)
