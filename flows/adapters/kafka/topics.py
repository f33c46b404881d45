"""The pipeline's topics: the start-up checks (they exist, they are sized for each other,
the failure topic is not compacted) and, for the demo, the tests and the benchmark, their
creation (`ensure_topics`). Production creates topics with its own tooling."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
)

from flows import connections
from flows.core.sizes import TopicLimits, TopicSize, size_problems, topic_sizes_to_create
from flows.errors import PreflightError
from flows.settings import Settings


def _admin(settings: Settings, extra: Mapping[str, Any] | None = None) -> AdminClient:
    return AdminClient(
        {**connections.kafka_common(settings), "socket.connection.setup.timeout.ms": 5000, **(extra or {})}
    )


class _Reasons(logging.Handler):
    """librdkafka's log lines of one client, kept: the reason a connection failed (a
    certificate, a password) is only in them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def summary(self) -> str:
        """The distinct reasons, without librdkafka's prefixes and timings."""
        seen: dict[str, None] = {}
        for line in self.lines:
            reason = re.sub(r"^\S+ \[[^]]*\] \[thrd:[^]]*\]: |^[a-z_]+://\S+: |\s*\(after \d+ms[^)]*\)", "", line)
            reason = re.sub(r"^[a-z_]+://\S+: ", "", reason)
            seen.setdefault(reason.strip(), None)
        return "; ".join(list(seen)[:3])


# what librdkafka reports for a connection no retry will make: a certificate, a password
_REFUSED = re.compile(
    r"SSL handshake failed|certificate verify failed|SASL authentication error|Authentication failed|"
    r"SASL (SCRAM|PLAIN|OAUTHBEARER)[^;]* failed|alert (certificate|bad|unknown|handshake)",
    re.IGNORECASE,
)


def check_kafka(settings: Settings, topics: Iterable[str], client: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Kafka answers and each topic exists: their partition counts, or PreflightError
    with librdkafka's reason (a TLS or SASL failure is only in its log lines; the reason is
    kept whatever `client` says, and a refusal no retry will change ends the wait at once).
    `client` adds librdkafka settings."""
    reasons = _Reasons()
    log = logging.Logger("flows.preflight.kafka")  # not registered: its lines are only kept
    log.addHandler(reasons)
    admin = _admin(settings, {**(client or {}), "logger": log})
    timeout = settings.startup_timeout_seconds
    deadline = time.monotonic() + timeout
    while True:
        try:
            md = admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            break
        except Exception as exc:
            admin.poll(0)  # serves the log lines queued so far
            why = reasons.summary()
            refused = bool(_REFUSED.search(why))
            if not refused and time.monotonic() < deadline:
                continue
            why = why or str(exc)
            if re.search(r"alert (certificate unknown|bad certificate|certificate expired|unknown ca)", why):
                why += " (the broker refused the client certificate: expired, or not signed by a CA it trusts)"
            elif "certificate verify failed" in why:
                why = _name_check(settings) or why
            within = "" if refused else f" within {timeout:g}s"
            raise PreflightError(
                f"Kafka at {settings.kafka_bootstrap_servers} ({settings.kafka_security_protocol}): can't "
                f"connect{within}: {why}"
            ) from None
    counts: dict[str, int] = {}
    for topic in topics:
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise PreflightError(f"Kafka topic '{topic}' does not exist on {settings.kafka_bootstrap_servers}")
        counts[topic] = len(meta.partitions)
    return counts


def _name_check(settings: Settings) -> str | None:
    """When librdkafka says the broker's certificate could not be verified (and blames the
    CA), ask again ourselves with the name check off: if the chain verifies, the CA is fine
    and the certificate does not name the host connected to. None: it is the chain."""
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].strip().rpartition(":")
    host = host.strip("[]")
    try:
        ctx = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location)
        ctx.check_hostname = False
        if settings.kafka_ssl_certificate_location and settings.kafka_ssl_key_location:
            ctx.load_cert_chain(
                settings.kafka_ssl_certificate_location,
                settings.kafka_ssl_key_location,
                password=settings.kafka_ssl_key_password.get() or None,
            )
        with (
            socket.create_connection((host, int(port)), timeout=5) as sock,
            ctx.wrap_socket(sock, server_hostname=host) as tls,
        ):
            cert = tls.getpeercert() or {}
    except (OSError, ValueError, ssl.SSLError):
        return None
    alt: Any = cert.get("subjectAltName", ())
    names = [str(entry[1]) for entry in alt if entry[0] in ("DNS", "IP Address")]
    if settings.kafka_ssl_endpoint_identification == "none":
        return None
    return (
        f"the broker's certificate is signed by a CA this client trusts but does not name '{host}' (it names "
        f"{', '.join(names) or 'nothing'}): connect by a name the certificate carries, or have the broker's "
        "certificate name this one (KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=none turns the check off)"
    )


def max_message_bytes(settings: Settings, topics: Sequence[str]) -> dict[str, int]:
    """Each topic's `max.message.bytes` as the broker has it now (the flow's own view at run
    time, after a limit was changed under it)."""
    admin = _admin(settings)
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, t) for t in topics], request_timeout=settings.startup_timeout_seconds
    )
    return {
        r.name: int(f.result(timeout=settings.startup_timeout_seconds + 5)["max.message.bytes"].value)
        for r, f in futures.items()
    }


def topic_sizes(settings: Settings, topics: dict[str, str]) -> dict[str, TopicSize]:
    """Each topic's effective `max.message.bytes` ({setting name: topic name} in); raises
    PreflightError when a topic's configuration can't be read, or a dead letter without a
    key could not be written (a compacted failure topic refuses records without a key)."""
    admin = _admin(settings)
    resources = {name: ConfigResource(ResourceType.TOPIC, topic) for name, topic in topics.items()}
    futures = admin.describe_configs(list(resources.values()), request_timeout=settings.startup_timeout_seconds)
    by_topic = {r.name: f for r, f in futures.items()}
    sizes: dict[str, TopicSize] = {}
    for name, topic in topics.items():
        try:
            configs = by_topic[topic].result(timeout=settings.startup_timeout_seconds + 5)
            entry = configs["max.message.bytes"]
            max_bytes = int(entry.value)
            policy = str(configs["cleanup.policy"].value) if "cleanup.policy" in configs else "delete"
        except Exception as exc:
            raise PreflightError(
                f"can't read the configuration of Kafka topic '{topic}' ({name}): {exc} (the flow "
                "needs DescribeConfigs on its topics to check their sizes)"
            ) from None
        source = getattr(entry.source, "value", entry.source)
        override = source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        sizes[name] = TopicSize(name, topic, max_bytes, broker_default=not override)
        if name == "FAILURE_TOPIC" and "compact" in policy:
            raise PreflightError(
                f"FAILURE_TOPIC {topic} has cleanup.policy={policy}: a compacted topic refuses "
                "records without a key, and dead letters keep the input key, null included"
            )
    return sizes


def check_topic_sizes(settings: Settings) -> TopicLimits:
    """The size rule (flows.sizes): every record the input topic accepts fits the failure
    topic with the failure headers and the output topic with what enrichment adds."""
    sizes = topic_sizes(
        settings,
        {
            "INPUT_TOPIC": settings.input_topic,
            "OUTPUT_TOPIC": settings.output_topic,
            "FAILURE_TOPIC": settings.failure_topic,
        },
    )
    problems = size_problems(
        settings.max_value_bytes, sizes["INPUT_TOPIC"], sizes["OUTPUT_TOPIC"], sizes["FAILURE_TOPIC"]
    )
    if problems:
        raise PreflightError("topic sizes do not fit: " + "; ".join(problems))
    return TopicLimits(output=sizes["OUTPUT_TOPIC"].max_bytes, failure=sizes["FAILURE_TOPIC"].max_bytes)


def check_kafka_clients(settings: Settings) -> None:
    """The producer settings a rare record needs are usable here: the zstd producer that
    sends a dead letter too large to go plain (flows.delivery) is built only when one comes."""
    try:
        Producer({**connections.kafka_common(settings), "compression.type": "zstd"}).flush(0)
    except KafkaException as exc:
        raise PreflightError(f"the Kafka client can't compress with zstd: {exc}") from None


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    """Create missing topics, sized by the size rule (flows.sizes): the input topic takes a
    value of MAX_VALUE_BYTES plus 64 KiB of key and headers, the output and failure topics
    8 KiB more. An existing topic smaller than that is enlarged."""
    input_size, output_size = topic_sizes_to_create(settings.max_value_bytes)
    wanted = {n: input_size if n == settings.input_topic else output_size for n in names}
    admin = AdminClient(connections.kafka_common(settings))
    existing = admin.list_topics(timeout=settings.startup_timeout_seconds).topics
    new = [
        NewTopic(n, num_partitions=partitions, replication_factor=1, config={"max.message.bytes": str(size)})
        for n, size in wanted.items()
        if n not in existing
    ]
    if new:
        for topic, fut in admin.create_topics(new, operation_timeout=30).items():
            try:
                fut.result(timeout=60)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RuntimeError(f"creating topic {topic}: {exc}") from exc
    _enlarge(admin, {n: size for n, size in wanted.items() if n in existing})


def _enlarge(admin: AdminClient, wanted: dict[str, int]) -> None:
    if not wanted:
        return
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in wanted]
    small = []
    for resource, fut in admin.describe_configs(resources).items():
        current = int(fut.result(timeout=60)["max.message.bytes"].value)
        if current < wanted[resource.name]:
            small.append(
                ConfigResource(
                    ResourceType.TOPIC,
                    resource.name,
                    incremental_configs=[
                        ConfigEntry(
                            "max.message.bytes", str(wanted[resource.name]), incremental_operation=AlterConfigOpType.SET
                        )
                    ],
                )
            )
    if small:
        for fut in admin.incremental_alter_configs(small).values():
            fut.result(timeout=60)


def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    """Delete those of the topics that exist."""
    admin = AdminClient(connections.kafka_common(settings))
    existing = admin.list_topics(timeout=settings.startup_timeout_seconds).topics
    todo = [n for n in names if n in existing]
    if todo:
        for fut in admin.delete_topics(todo, operation_timeout=30).values():
            fut.result(timeout=60)
