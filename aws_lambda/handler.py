"""The Lambda entry point, `aws_lambda.handler.handler`, for an Amazon MSK or self-managed
Kafka event source mapping.

One invocation is one batch: parse the event, run the records through
`flows.pipeline.process` (the dataflow's decode/validate and enrich steps), then deliver
them as the dataflow does (`flows.delivery`: every history row written, every message
acknowledged, a message a topic refuses re-routed). It returns only when all of that is
done, so the mapping commits offsets of records whose output is safe. A bad record is a
value routed to the failure topic and never fails the batch (a failed batch is retried
forever). A dependency that stays down past RETRY_DEADLINE_SECONDS, or anything else
unexpected, raises: Lambda then retries the batch (at-least-once; history rows are
idempotent upserts, Kafka messages of a retried batch may appear twice, with the same
`source.*` headers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aws_lambda.clients import ClientHolder
from aws_lambda.event import KafkaBatch, parse_event, reject_own_outputs, summarise
from flows.kafka_io import DeliveryFailed
from flows.memory import pin_mmap_threshold
from flows.pipeline import process
from flows.retry import DependencyUnavailable, is_retriable

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
    try:
        results = process(batch.records, clients.enricher, settings.max_value_bytes)
    except Exception as exc:
        _log_batch_failed(batch, exc, request_id)
        raise
    try:
        # the dataflow's delivery: messages handed to the producer, history rows written
        # (idempotent upserts: a retried batch rewrites the same rows), then every Kafka
        # acknowledgement awaited; a message a topic refuses is re-routed, not raised
        clients.delivery().write(results)
    except Exception as exc:
        clients.renew_writer()
        _log_batch_failed(batch, exc, request_id)
        raise
    finally:
        clients.failures.flush()
        clients.fallbacks.flush()
    summary = summarise(batch, results)
    log.info("batch done", extra={"fields": {**summary, "request_id": request_id}})
    return summary


def _log_batch_failed(batch: KafkaBatch, exc: BaseException, request_id: str | None) -> None:
    """One line saying which records Lambda will retry and whether the cause may pass."""
    cause = exc.__cause__ or exc
    partitions = sorted({f"{r.topic}-{r.partition}" for r in batch.records})
    log.error("batch failed, Lambda will retry it", extra={"fields": {
        "request_id": request_id, "records": len(batch.records), "partitions": partitions,
        "retriable": isinstance(exc, DependencyUnavailable | DeliveryFailed) or is_retriable(cause),
        "error": f"{type(exc).__name__}: {exc}"[:500]}})
