"""The Schema Registry (Confluent's API: Confluent Schema Registry, Apicurio's ccompat,
Karapace...) through confluent_kafka.schema_registry's client, which caches the schemas it
fetched: one client per process, built from the settings (SCHEMA_REGISTRY_*).

Which failures are which: the registry unreachable, slow, overloaded or refusing our
credentials may pass (the flow waits and retries, and never dead-letters a record for it);
a schema id it does not have is the record's."""

from __future__ import annotations

import re
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from flows.errors import PreflightError
from flows.retry import Kind
from flows.settings import Settings

NOT_FOUND = 404


def registry_config(s: Settings) -> dict[str, Any]:
    """The client's configuration: URL, authentication, TLS; its own retries kept short
    (the flow's retry policy rides out an outage)."""
    conf: dict[str, Any] = {
        "url": s.schema_registry_url,
        "max.retries": 1,
        "retries.wait.ms": 200,
        "retries.max.wait.ms": 1000,
        "timeout": 10,
    }
    if s.schema_registry_username:
        conf["basic.auth.user.info"] = f"{s.schema_registry_username}:{s.schema_registry_password.get()}"
    if s.schema_registry_bearer_token:
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = s.schema_registry_bearer_token.get()
        conf["bearer.auth.logical.cluster"] = s.schema_registry_logical_cluster or ""
    for key, value in (
        ("ssl.ca.location", s.schema_registry_ssl_ca_location),
        ("ssl.certificate.location", s.schema_registry_ssl_certificate_location),
        ("ssl.key.location", s.schema_registry_ssl_key_location),
        ("ssl.key.password", s.schema_registry_ssl_key_password.get()),
    ):
        if value:
            conf[key] = value
    return conf


def registry_client(s: Settings) -> SchemaRegistryClient:
    """A client for the settings' registry (no request is made until one is needed)."""
    return SchemaRegistryClient(registry_config(s))


def classify(exc: BaseException) -> Kind:
    """The registry away, slow or overloaded, or refusing us (credentials being rotated):
    retriable. A schema it does not have: the record's. Anything else: a bug of ours."""
    if isinstance(exc, httpx.TransportError):
        return Kind.RETRIABLE
    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        if status == NOT_FOUND:
            return Kind.RECORD
        if status >= 500 or status in (401, 403, 408, 429):
            return Kind.RETRIABLE
    return Kind.FATAL


def check_registry(s: Settings) -> None:
    """The registry answers (within STARTUP_TIMEOUT_SECONDS): PreflightError otherwise."""
    conf = registry_config(s)
    conf["timeout"] = s.startup_timeout_seconds
    conf["max.retries"] = 0
    try:
        SchemaRegistryClient(conf).get_subjects()
    except Exception as exc:  # noqa: BLE001 - any failure: the one line says which
        raise PreflightError(f"Schema Registry at {s.schema_registry_url}: can't use it: {reason(exc)}") from None


def reason(exc: BaseException) -> str:
    """One line for an exception from the client."""
    if isinstance(exc, SchemaRegistryError):
        return f"HTTP {exc.http_status_code}, error {exc.error_code}: {exc.error_message}"
    why = f"{type(exc).__name__}: {exc}"[:300]
    if re.search(r"ALERT_(BAD_CERTIFICATE|CERTIFICATE_UNKNOWN|UNKNOWN_CA|CERTIFICATE_REQUIRED)", why):
        why += (
            " (the registry ended the TLS handshake: it refused the client certificate, expired or not "
            "signed by a CA it trusts, or it requires one: SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION)"
        )
    return why
