"""One frozen settings object, read from the environment once at start.

The names and defaults of the first settings (docs/configuration.md, through
`CONSUMER_GROUP`) are the project's public interface: other programs and deployments rely
on them; every setting is listed there. A bad value raises
`SettingsError` naming the variable and the reason; the entry points exit with status 2.
Secrets are held in `Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from flows import connections
from flows.errors import SettingsError

T = TypeVar("T")


class Secret:
    """A string that never appears in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret itself (for a client library, never for a log)."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('****')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class DsnError(SettingsError):
    """A PostgreSQL DSN libpq can't parse. Its message never quotes the DSN: libpq's own
    message copies part of it, which may be the password."""


def parse_dsn(dsn: str) -> dict[str, str]:
    """libpq's reading of a DSN (URL or key=value pairs), or `DsnError`."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except (ProgrammingError, ValueError, TypeError):
        raise DsnError(
            "not a PostgreSQL connection string libpq can parse (its message is not shown: it "
            "would quote the value); expected postgresql://user@host:port/dbname or key=value "
            "pairs, with special characters percent-encoded in a URL or quoted in key=value "
            "pairs"
        ) from None
    return {k: str(v) for k, v in params.items()}


def redact_dsn(dsn: str) -> str:
    """A PostgreSQL DSN for logs and errors: rebuilt from what libpq parsed, the password
    replaced; nothing of a DSN that does not parse."""
    try:
        params = parse_dsn(dsn)
    except DsnError:
        return "(PG_DSN hidden: it does not parse)"
    if "://" in dsn:
        user, password = params.get("user", ""), "password" in params
        auth = f"{user}{':****' if password else ''}@" if user or password else ""
        port = f":{params['port']}" if "port" in params else ""
        return f"postgresql://{auth}{params.get('host', '')}{port}/{params.get('dbname', '')}"
    return " ".join(f"{k}=****" if k == "password" else f"{k}={_quoted(v)}" for k, v in params.items())


def _quoted(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected true or false")


def _int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None else f"must be >= {lo}")
        return value

    return parse


def _float_range(lo: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not value >= lo:
            raise ValueError(f"must be >= {lo:g}")
        return value

    return parse


def _nonempty(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _topic(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value):
        raise ValueError("a Kafka topic name is 1..249 of [A-Za-z0-9._-]")
    return value


def _cql_name(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,47}", value):
        raise ValueError("a CQL keyspace name is a letter then up to 47 of [A-Za-z0-9_]")
    return value


def _hosts(raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip() for h in raw.split(",") if h.strip())
    if not hosts:
        raise ValueError("needs at least one host")
    return hosts


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        for choice in choices:
            if value.lower() == choice.lower():
                return choice
        raise ValueError(f"must be one of {', '.join(choices)}")

    return parse


def _optional(raw: str) -> str | None:
    return raw.strip() or None


def _optional_one_of(*choices: str) -> Callable[[str], str | None]:
    one_of = _one_of(*choices)
    return lambda raw: one_of(raw) if raw.strip() else None


def _secret(raw: str) -> Secret:
    return Secret(raw)


def _env(name: str, default: str, parse: Callable[[str], Any] = _nonempty, secret: bool = False) -> Any:
    """A dataclass field read from environment variable `name`."""
    return field(default=None, metadata={"env": name, "default": default, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Every setting of the pipeline (docs/configuration.md), read once from the environment."""

    # --- contract
    kafka_bootstrap_servers: str = _env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    input_topic: str = _env("INPUT_TOPIC", "events", _topic)
    output_topic: str = _env("OUTPUT_TOPIC", "events.enriched", _topic)
    failure_topic: str = _env("FAILURE_TOPIC", "events.failed", _topic)
    pg_dsn: Secret = _env("PG_DSN", "postgresql://postgres@127.0.0.1:5432/enrichment", _secret, secret=True)
    scylla_hosts: tuple[str, ...] = _env("SCYLLA_HOSTS", "127.0.0.1", _hosts)
    scylla_port: int = _env("SCYLLA_PORT", "9042", _int_range(1, 65535))
    scylla_keyspace: str = _env("SCYLLA_KEYSPACE", "enrichment", _cql_name)
    stop_at_end: bool = _env("STOP_AT_END", "false", _bool)
    log_level: str = _env("LOG_LEVEL", "INFO", _one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    processing_guarantee: str = _env("PROCESSING_GUARANTEE", "at-least-once", _one_of("at-least-once", "exactly-once"))
    consumer_group: str = _env("CONSUMER_GROUP", "enrichment")
    # --- Kafka security
    kafka_security_protocol: str = _env(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", _one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    )
    kafka_sasl_mechanism: str | None = _env(
        "KAFKA_SASL_MECHANISM", "", _optional_one_of("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
    )
    kafka_sasl_username: str | None = _env("KAFKA_SASL_USERNAME", "", _optional)
    kafka_sasl_password: Secret = _env("KAFKA_SASL_PASSWORD", "", _secret, secret=True)
    # OAUTHBEARER: a token from an OIDC provider (client credentials) or signed for Amazon MSK
    kafka_sasl_oauthbearer_method: str | None = _env(
        "KAFKA_SASL_OAUTHBEARER_METHOD", "", _optional_one_of("oidc", "aws-msk-iam")
    )
    kafka_oidc_client_id: str | None = _env("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", "", _optional)
    kafka_oidc_client_secret: Secret = _env("KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", "", _secret, secret=True)
    kafka_oidc_token_endpoint_url: str | None = _env("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", "", _optional)
    kafka_oidc_scope: str | None = _env("KAFKA_SASL_OAUTHBEARER_SCOPE", "", _optional)
    kafka_oidc_extensions: str | None = _env("KAFKA_SASL_OAUTHBEARER_EXTENSIONS", "", _optional)
    kafka_msk_iam_region: str | None = _env("KAFKA_MSK_IAM_REGION", "", _optional)
    kafka_msk_iam_role_arn: str | None = _env("KAFKA_MSK_IAM_ROLE_ARN", "", _optional)
    kafka_ssl_ca_location: str | None = _env("KAFKA_SSL_CA_LOCATION", "", _optional)
    kafka_ssl_certificate_location: str | None = _env("KAFKA_SSL_CERTIFICATE_LOCATION", "", _optional)
    kafka_ssl_key_location: str | None = _env("KAFKA_SSL_KEY_LOCATION", "", _optional)
    kafka_ssl_key_password: Secret = _env("KAFKA_SSL_KEY_PASSWORD", "", _secret, secret=True)
    kafka_ssl_endpoint_identification: str = _env(
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https", _one_of("https", "none")
    )
    # any other librdkafka property: KAFKA_CLIENT_<NAME> (flows/connections.py)
    kafka_client_properties: tuple[tuple[str, str], ...] = field(default=(), metadata={"env": None, "secret": False})
    # --- PostgreSQL
    pg_password: Secret = _env("PG_PASSWORD", "", _secret, secret=True)
    pg_sslmode: str | None = _env(
        "PG_SSLMODE", "", _optional_one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
    )
    pg_sslrootcert: str | None = _env("PG_SSLROOTCERT", "", _optional)
    pg_sslcert: str | None = _env("PG_SSLCERT", "", _optional)
    pg_sslkey: str | None = _env("PG_SSLKEY", "", _optional)
    pg_sslpassword: Secret = _env("PG_SSLPASSWORD", "", _secret, secret=True)
    pg_pool_min: int = _env("PG_POOL_MIN", "1", _int_range(0, 100))
    pg_pool_max: int = _env("PG_POOL_MAX", "4", _int_range(1, 100))
    # --- ScyllaDB / Cassandra
    scylla_username: str | None = _env("SCYLLA_USERNAME", "", _optional)
    scylla_password: Secret = _env("SCYLLA_PASSWORD", "", _secret, secret=True)
    scylla_local_dc: str | None = _env("SCYLLA_LOCAL_DC", "", _optional)
    scylla_ssl: bool = _env("SCYLLA_SSL", "false", _bool)
    scylla_ssl_ca: str | None = _env("SCYLLA_SSL_CA", "", _optional)
    scylla_ssl_certfile: str | None = _env("SCYLLA_SSL_CERTFILE", "", _optional)
    scylla_ssl_keyfile: str | None = _env("SCYLLA_SSL_KEYFILE", "", _optional)
    scylla_ssl_key_password: Secret = _env("SCYLLA_SSL_KEY_PASSWORD", "", _secret, secret=True)
    # off only for contact points whose certificates name no IP (the chain is still verified)
    scylla_ssl_check_hostname: bool = _env("SCYLLA_SSL_CHECK_HOSTNAME", "true", _bool)
    scylla_replication_class: str = _env(
        "SCYLLA_REPLICATION_CLASS", "SimpleStrategy", _one_of("SimpleStrategy", "NetworkTopologyStrategy")
    )
    scylla_replication_factor: int = _env("SCYLLA_REPLICATION_FACTOR", "1", _int_range(1, 10))
    history_ttl_seconds: int = _env("HISTORY_TTL_SECONDS", "0", _int_range(0, 630720000))
    history_concurrency: int = _env("HISTORY_CONCURRENCY", "128", _int_range(1, 4096))
    # rows per unlogged CQL batch, and their estimated size: under ScyllaDB's batch warning
    # (128 KiB) and stock Cassandra's failure threshold (50 KiB); docs/configuration.md
    history_batch_rows: int = _env("HISTORY_BATCH_ROWS", "50", _int_range(1, 1000))
    history_batch_bytes: int = _env("HISTORY_BATCH_BYTES", "40960", _int_range(1024, 1024 * 1024))
    # --- processing
    max_value_bytes: int = _env("MAX_VALUE_BYTES", "1048576", _int_range(1, 64 * 1024 * 1024))
    cache_ttl_seconds: float = _env("CACHE_TTL_SECONDS", "300", _float_range(0))
    cache_negative_ttl_seconds: float = _env("CACHE_NEGATIVE_TTL_SECONDS", "30", _float_range(0))
    cache_max_size: int = _env("CACHE_MAX_SIZE", "100000", _int_range(0))
    # "not found" answers have their own LRU, so unknown ids never evict known customers
    cache_negative_max_size: int = _env("CACHE_NEGATIVE_MAX_SIZE", "10000", _int_range(0))
    # `notify`: PostgreSQL announces customer changes and every cache drops them at once
    # (needs `python -m ops migrate install`); `ttl`: entries live out their TTL
    cache_invalidation: str = _env("CACHE_INVALIDATION", "ttl", _one_of("ttl", "notify"))
    lookup_batch_size: int = _env("LOOKUP_BATCH_SIZE", "1000", _int_range(1, 100000))
    source_batch_size: int = _env("SOURCE_BATCH_SIZE", "1000", _int_range(1, 100000))
    # --- progress in Kafka (docs/operations.md, "What is guaranteed")
    # exactly-once: a transaction commits at least this often (and when a partition moves)
    commit_interval_ms: int = _env("COMMIT_INTERVAL_MS", "100", _int_range(10, 60_000))
    # at-least-once: finished offsets committed to CONSUMER_GROUP this often, for visibility
    offset_commit_interval_seconds: float = _env("OFFSET_COMMIT_INTERVAL_SECONDS", "1", _float_range(0.1))
    # at-least-once: a worker waits for a batch's acknowledgements while it processes the next
    overlap_acks: bool = _env("OVERLAP_ACKS", "true", _bool)
    # exactly-once: a group member silent this long is replaced (and its commits fenced); a
    # killed process's partitions wait this long before a restart or another member gets them
    kafka_session_timeout_ms: int = _env("KAFKA_SESSION_TIMEOUT_MS", "10000", _int_range(6000, 300_000))
    # exactly-once: an open transaction of a process that died is aborted after this
    transaction_timeout_ms: int = _env("TRANSACTION_TIMEOUT_MS", "30000", _int_range(1000, 900_000))
    # exactly-once: the prefix of each worker's transactional.id (default CONSUMER_GROUP)
    transactional_id_prefix: str | None = _env("TRANSACTIONAL_ID_PREFIX", "", _optional)
    # --- operations
    startup_timeout_seconds: float = _env("STARTUP_TIMEOUT_SECONDS", "10", _float_range(0.1))
    retry_deadline_seconds: float = _env("RETRY_DEADLINE_SECONDS", "180", _float_range(1))
    progress_interval_seconds: float = _env("PROGRESS_INTERVAL_SECONDS", "10", _float_range(0.1))
    shutdown_timeout_seconds: float = _env("SHUTDOWN_TIMEOUT_SECONDS", "60", _float_range(1))
    recovery_partitions: int = _env("RECOVERY_PARTITIONS", "4", _int_range(1, 1024))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every setting, or SettingsError naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            meta = f.metadata
            if meta["env"] is None:
                continue
            raw = env.get(meta["env"])
            if raw is None or (raw.strip() == "" and not meta["secret"]):
                raw = meta["default"]
            try:
                values[f.name] = meta["parse"](raw)
            except ValueError as exc:
                shown = "(hidden)" if meta["secret"] else repr(raw)
                raise SettingsError(f"{meta['env']}={shown}: {exc}") from None
        values["kafka_client_properties"] = connections.client_properties(env)
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        topics = {
            "INPUT_TOPIC": self.input_topic,
            "OUTPUT_TOPIC": self.output_topic,
            "FAILURE_TOPIC": self.failure_topic,
        }
        if len(set(topics.values())) != 3:
            raise SettingsError(f"INPUT_TOPIC, OUTPUT_TOPIC and FAILURE_TOPIC must differ: {topics}")
        if self.pg_pool_min > self.pg_pool_max:
            raise SettingsError(f"PG_POOL_MIN={self.pg_pool_min}: must not exceed PG_POOL_MAX={self.pg_pool_max}")
        try:
            parse_dsn(self.pg_dsn.get())
        except DsnError as exc:
            raise SettingsError(f"PG_DSN=(hidden): {exc}") from None
        if self.exactly_once and self.commit_interval_ms * 2 > self.transaction_timeout_ms:
            raise SettingsError(
                f"COMMIT_INTERVAL_MS={self.commit_interval_ms}: must be under half of "
                f"TRANSACTION_TIMEOUT_MS={self.transaction_timeout_ms}"
            )
        if self.scylla_replication_class == "NetworkTopologyStrategy" and not self.scylla_local_dc:
            raise SettingsError("SCYLLA_LOCAL_DC: required with SCYLLA_REPLICATION_CLASS=NetworkTopologyStrategy")
        connections.check(self)

    @property
    def exactly_once(self) -> bool:
        """PROCESSING_GUARANTEE=exactly-once."""
        return self.processing_guarantee == "exactly-once"

    # --- derived client configurations

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka settings shared by every client: brokers and security."""
        return connections.kafka_common(self)

    def pg_connect_kwargs(self) -> dict[str, Any]:
        """psycopg connection arguments besides the DSN (password, TLS)."""
        return connections.pg_connect_kwargs(self)

    def describe(self) -> dict[str, Any]:
        """Every setting, secrets hidden and the DSN redacted: safe to log."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "pg_dsn":
                value = redact_dsn(value.get())
            elif isinstance(value, Secret):
                value = "****" if value else ""
            elif f.name == "kafka_client_properties":
                out["KAFKA_CLIENT_*"] = connections.shown_properties(value)
                continue
            elif isinstance(value, tuple):
                value = ",".join(value)
            out[f.metadata["env"]] = value
        return out


ENV_NAMES: tuple[str, ...] = tuple(f.metadata["env"] for f in fields(Settings) if f.metadata["env"])
