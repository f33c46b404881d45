"""The Lambda entry point, `aws_lambda.handler.handler`, for an Amazon MSK or self-managed
Kafka event source mapping.

One invocation is one batch: parse the event, decode, validate and enrich the records and
deliver them to every output as the dataflow does (`flows.app`: every history row
written, every message acknowledged, a message a topic refuses re-routed). It returns only when all of that is
done, so the mapping commits offsets of records whose output is safe. A bad record is a
value routed to the failure topic and never fails the batch (a failed batch is retried
forever). A dependency that stays down past RETRY_DEADLINE_SECONDS, or anything else
unexpected, raises: Lambda then retries the batch (at-least-once; history rows are
idempotent upserts, Kafka messages of a retried batch may appear twice, with the same
`source.*` headers).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from flows.adapters.kafka.errors import classify as kafka_kind
from flows.adapters.postgres.changes import ChangeListener
from flows.adapters.postgres.errors import classify as postgres_kind
from flows.adapters.scylla.errors import classify as cql_kind
from flows.errors import DependencyError
from flows.retry import Kind
from flows.runtime.awslambda import emf
from flows.runtime.awslambda.clients import ClientHolder
from flows.runtime.awslambda.event import KafkaBatch, parse_event, reject_own_outputs, summarise
from flows.runtime.memory import pin_mmap_threshold

log = logging.getLogger(__name__)
pin_mmap_threshold()  # a warm container's RSS stays flat while its customer cache churns

CLIENTS = ClientHolder()


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Process one event source mapping batch; returns counts by outcome and failure code."""
    batch = parse_event(event)  # MalformedEvent before any client is touched
    clients = CLIENTS.get()
    settings = clients.settings
    reject_own_outputs(batch, settings.output_topic, settings.failure_topic)
    request_id = getattr(context, "aws_request_id", None)
    _hear_changes(clients.app.change_listener())
    started, retries = time.monotonic(), Counter(clients.app.metrics.retries)
    summary: dict[str, Any] | None = None
    try:
        results = clients.app.process(batch.records, clients.enricher)
        try:
            # the dataflow's delivery: history rows (idempotent upserts: a retried batch
            # rewrites the same rows) and every message acknowledged; a message a topic
            # refuses is re-routed, not raised
            clients.delivery.write(results)
        except Exception:
            clients.renew_delivery()
            raise
        finally:
            clients.app.flush_logs()
    except Exception as exc:
        _log_batch_failed(batch, exc, request_id)
        raise
    else:
        summary = summarise(batch, results)
        log.info("batch done", extra={"fields": {**summary, "request_id": request_id}})
        return summary
    finally:
        retried = Counter(clients.app.metrics.retries)
        retried.subtract(retries)
        emf.invocation(summary, len(batch.records), time.monotonic() - started, retried)


def _hear_changes(listener: ChangeListener | None) -> None:
    """CACHE_INVALIDATION=notify: the customer changes announced since the last batch (a
    container has no thread running between invocations). If PostgreSQL can't be heard the
    batch goes on with the caches as they are; the next connection clears them."""
    if listener is None:
        return
    try:
        listener.drain(timeout=0.0)
    except Exception as exc:  # noqa: BLE001 - freshness is best effort here; TTLs still bound it
        log.warning("customer changes: not heard", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"[:300]}})


def _log_batch_failed(batch: KafkaBatch, exc: BaseException, request_id: str | None) -> None:
    """One line saying which records Lambda will retry and whether the cause may pass."""
    cause = exc.__cause__ or exc
    partitions = sorted({f"{r.topic}-{r.partition}" for r in batch.records})
    log.error(
        "batch failed, Lambda will retry it",
        extra={
            "fields": {
                "request_id": request_id,
                "records": len(batch.records),
                "partitions": partitions,
                "retriable": isinstance(exc, DependencyError) or _retriable(cause),
                "error": f"{type(exc).__name__}: {exc}"[:500],
            }
        },
    )


def _retriable(exc: BaseException) -> bool:
    return any(kind(exc) is Kind.RETRIABLE for kind in (kafka_kind, postgres_kind, cql_kind))
