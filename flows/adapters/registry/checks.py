"""The start-up checks of the Schema Registry formats: the registry answers, and the output's
schema is registered under its subject (the registry may refuse it: an evolution its
compatibility level does not allow). Either failure is one line and exit status 2, before any
record is read, not at the first record."""

from __future__ import annotations

from confluent_kafka.schema_registry.error import SchemaRegistryError

from flows.adapters.registry.client import check_registry, reason, registry_client
from flows.adapters.registry.writers import SAMPLE, FramedWriter
from flows.errors import PreflightError
from flows.retry import Retries
from flows.settings import Settings


def check_formats(settings: Settings) -> None:
    """Nothing for JSON in and out; else the registry answers and takes the output's schema."""
    s = settings
    if s.input_format == "json" and s.output_format == "json":
        return
    check_registry(s)
    if s.output_format == "json":
        return
    writer = FramedWriter(
        s.output_format,
        registry_client(s),
        s.output_topic,
        s.subject_name_strategy,
        Retries(s.startup_timeout_seconds),
    )
    subject = writer.subject()
    try:
        writer.write(SAMPLE)  # registers the schema (or finds it registered)
    except SchemaRegistryError as exc:
        hint = (
            " (the subject's compatibility level does not allow this schema after its latest version)"
            if exc.http_status_code == 409
            else ""
        )
        raise PreflightError(
            f"Schema Registry at {s.schema_registry_url} refuses OUTPUT_FORMAT={s.output_format}'s schema under "
            f"subject {subject}: {reason(exc)}{hint}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - one line, whatever it was
        raise PreflightError(
            f"Schema Registry at {s.schema_registry_url}: can't register OUTPUT_FORMAT={s.output_format}'s "
            f"schema under subject {subject}: {reason(exc)}"
        ) from None
