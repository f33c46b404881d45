"""One frozen settings object, read from the environment once at start.

The names and defaults of the first settings (docs/configuration.md, through
`CONSUMER_GROUP`) are the project's public interface: other programs and deployments rely
on them; every setting is listed there. A bad value raises
`SettingsError` naming the variable and the reason; the entry points exit with status 2.
Secrets are held in `Secret`, whose repr never shows the value.

Reading is parsing and checking: the KAFKA_CLIENT_* properties are parsed here, and every
connection option is checked here (a missing file, a certificate without its key, a key its
password does not open, an option of a protocol not in use), before any client is made.
The clients' options are built from a `Settings` by `flows/connections.py`, which this
module does not import (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

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


FORMATS = ("json", "avro", "protobuf", "json-schema")


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _optional(raw: str) -> str | None:
    return raw.strip() or None


def _optional_one_of(*choices: str) -> Callable[[str], str | None]:
    one_of = _one_of(*choices)
    return lambda raw: one_of(raw) if raw.strip() else None


def _secret(raw: str) -> Secret:
    return Secret(raw)


# ---------------------------------------------------------------- KAFKA_CLIENT_* properties

KAFKA_CLIENT_PREFIX = "KAFKA_CLIENT_"

# properties the pipeline sets itself: passing them as KAFKA_CLIENT_* would change its
# guarantees or duplicate a named setting
_RESERVED = {
    "bootstrap.servers": "KAFKA_BOOTSTRAP_SERVERS",
    "security.protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl.mechanism": "KAFKA_SASL_MECHANISM",
    "sasl.mechanisms": "KAFKA_SASL_MECHANISM",
    "sasl.username": "KAFKA_SASL_USERNAME",
    "sasl.password": "KAFKA_SASL_PASSWORD",
    "sasl.oauthbearer.method": "KAFKA_SASL_OAUTHBEARER_METHOD",
    "sasl.oauthbearer.client.id": "KAFKA_SASL_OAUTHBEARER_CLIENT_ID",
    "sasl.oauthbearer.client.secret": "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET",
    "sasl.oauthbearer.token.endpoint.url": "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
    "sasl.oauthbearer.scope": "KAFKA_SASL_OAUTHBEARER_SCOPE",
    "sasl.oauthbearer.extensions": "KAFKA_SASL_OAUTHBEARER_EXTENSIONS",
    "ssl.ca.location": "KAFKA_SSL_CA_LOCATION",
    "ssl.certificate.location": "KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl.key.location": "KAFKA_SSL_KEY_LOCATION",
    "ssl.key.password": "KAFKA_SSL_KEY_PASSWORD",
    "ssl.endpoint.identification.algorithm": "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
    "group.id": "CONSUMER_GROUP",
    "transactional.id": "TRANSACTIONAL_ID_PREFIX",
    "transaction.timeout.ms": "TRANSACTION_TIMEOUT_MS",
    "session.timeout.ms": "KAFKA_SESSION_TIMEOUT_MS",
    "message.timeout.ms": "RETRY_DEADLINE_SECONDS",
}
# set by the pipeline for its guarantees; no setting changes them
_FIXED = {
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "isolation.level",
    "auto.offset.reset",
    "partitioner",
}
_SENSITIVE = re.compile(r"password|secret|token|jaas|key\.pem|keystore\.key|credential", re.IGNORECASE)


def client_properties(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The librdkafka properties given as KAFKA_CLIENT_<NAME> variables, Confluent's image
    convention: the name lower-cased, `_` read as `.`, `__` as `_`, `___` as `-`
    (`KAFKA_CLIENT_SOCKET_KEEPALIVE_ENABLE=true` is `socket.keepalive.enable=true`)."""
    found: dict[str, str] = {}
    for var, value in environ.items():
        if not var.startswith(KAFKA_CLIENT_PREFIX) or var == KAFKA_CLIENT_PREFIX:
            continue
        raw = var[len(KAFKA_CLIENT_PREFIX) :].lower()
        name = raw.replace("___", "\x00").replace("__", "\x01").replace("_", ".")
        name = name.replace("\x00", "-").replace("\x01", "_")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name) or name.endswith("."):
            raise SettingsError(f"{var}: not a librdkafka property name ({name!r})")
        if name in _RESERVED:
            raise SettingsError(f"{var}: {name} is set by {_RESERVED[name]}, not by a KAFKA_CLIENT_ variable")
        if name in _FIXED or name.endswith(("_cb", ".cb")) or name == "logger":
            raise SettingsError(f"{var}: {name} is set by the pipeline for its guarantees and can't be changed")
        found[name] = value
    return tuple(sorted(found.items()))


def shown_properties(props: tuple[tuple[str, str], ...]) -> str:
    """KAFKA_CLIENT_* properties for a log line: values of secret-looking names hidden."""
    return ",".join(f"{k}={'****' if _SENSITIVE.search(k) else v}" for k, v in props)


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
    # any other librdkafka property: KAFKA_CLIENT_<NAME> (client_properties above)
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
    # --- formats (docs/configuration.md, Formats): json, or a Schema Registry format
    input_format: str = _env("INPUT_FORMAT", "json", _one_of(*FORMATS))
    output_format: str = _env("OUTPUT_FORMAT", "json", _one_of(*FORMATS))
    schema_registry_url: str = _env("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7", _url)
    schema_registry_username: str | None = _env("SCHEMA_REGISTRY_USERNAME", "", _optional)
    schema_registry_password: Secret = _env("SCHEMA_REGISTRY_PASSWORD", "", _secret, secret=True)
    schema_registry_bearer_token: Secret = _env("SCHEMA_REGISTRY_BEARER_TOKEN", "", _secret, secret=True)
    # Confluent Cloud's target-sr-cluster header, sent with a bearer token
    schema_registry_logical_cluster: str | None = _env("SCHEMA_REGISTRY_LOGICAL_CLUSTER", "", _optional)
    schema_registry_ssl_ca_location: str | None = _env("SCHEMA_REGISTRY_SSL_CA_LOCATION", "", _optional)
    schema_registry_ssl_certificate_location: str | None = _env(
        "SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION", "", _optional
    )
    schema_registry_ssl_key_location: str | None = _env("SCHEMA_REGISTRY_SSL_KEY_LOCATION", "", _optional)
    schema_registry_ssl_key_password: Secret = _env("SCHEMA_REGISTRY_SSL_KEY_PASSWORD", "", _secret, secret=True)
    # the subject the output's schema is registered under: <topic>-value, <record name>, or <topic>-<record name>
    subject_name_strategy: str = _env("SUBJECT_NAME_STRATEGY", "topic", _one_of("topic", "record", "topic-record"))
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
        values["kafka_client_properties"] = client_properties(env)
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
        _check_connections(self)

    @property
    def exactly_once(self) -> bool:
        """PROCESSING_GUARANTEE=exactly-once."""
        return self.processing_guarantee == "exactly-once"

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
                out["KAFKA_CLIENT_*"] = shown_properties(value)
                continue
            elif isinstance(value, tuple):
                value = ",".join(value)
            out[f.metadata["env"]] = value
        return out


# ---------------------------------------------------------------- connection options: checks


def _check_connections(settings: Settings) -> None:
    """Every connection option can work: SettingsError naming the first one that can't."""
    _check_kafka(settings)
    _check_postgres(settings)
    _check_cql(settings)
    _check_registry(settings)


def _check_registry(s: Settings) -> None:
    """The Schema Registry's options: TLS files that load, one way to authenticate."""
    if s.schema_registry_username and not s.schema_registry_password:
        raise SettingsError("SCHEMA_REGISTRY_PASSWORD: required with SCHEMA_REGISTRY_USERNAME")
    if s.schema_registry_password and not s.schema_registry_username:
        raise SettingsError("SCHEMA_REGISTRY_USERNAME: required with SCHEMA_REGISTRY_PASSWORD")
    if s.schema_registry_username and s.schema_registry_bearer_token:
        raise SettingsError(
            "SCHEMA_REGISTRY_BEARER_TOKEN: set with SCHEMA_REGISTRY_USERNAME; the registry takes one way to "
            "authenticate"
        )
    tls_set = _given(
        ("SCHEMA_REGISTRY_SSL_CA_LOCATION", s.schema_registry_ssl_ca_location),
        ("SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION", s.schema_registry_ssl_certificate_location),
    )
    if tls_set and not s.schema_registry_url.startswith("https://"):
        raise SettingsError(f"{tls_set[0]}: set, but SCHEMA_REGISTRY_URL is not https://")
    _ca("SCHEMA_REGISTRY_SSL_CA_LOCATION", s.schema_registry_ssl_ca_location)
    _key_pair(
        "SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION",
        s.schema_registry_ssl_certificate_location,
        "SCHEMA_REGISTRY_SSL_KEY_LOCATION",
        s.schema_registry_ssl_key_location,
        s.schema_registry_ssl_key_password.get(),
        "SCHEMA_REGISTRY_SSL_KEY_PASSWORD",
    )


def _given(*settings: tuple[str, object]) -> list[str]:
    """The names of the (name, value) pairs that have a value."""
    return [var for var, value in settings if value]


def _require(reason: str, *settings: tuple[str, object]) -> None:
    """Each setting must have a value, because of `reason`."""
    for var in (var for var, value in settings if not value):
        raise SettingsError(f"{var}: required with {reason}")


def _file(var: str, path: str | None) -> None:
    if path is None:
        return
    if not os.path.isfile(path):
        raise SettingsError(f"{var}={path}: no such file")
    if not os.access(path, os.R_OK):
        raise SettingsError(f"{var}={path}: not readable by this process")


def _key_pair(cert_var: str, cert: str | None, key_var: str, key: str | None, password: str, pw_var: str) -> None:
    """Both files or neither, and the key opens (with its password) and matches the certificate."""
    _file(cert_var, cert)
    _file(key_var, key)
    if bool(cert) != bool(key):
        missing, given = (key_var, cert_var) if cert else (cert_var, key_var)
        raise SettingsError(f"{missing}: required with {given} (a client certificate and its private key)")
    if cert is None or key is None:
        if password:
            raise SettingsError(f"{pw_var}: set, but no client key is configured")
        return
    try:
        # a str password, even empty: None would make OpenSSL prompt on the terminal
        ssl.create_default_context().load_cert_chain(cert, key, password=password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise SettingsError(f"{key_var}={key}: not the private key of {cert_var}={cert}") from None
        if "PEM lib" in str(exc):
            raise SettingsError(
                f"{key_var}={key}: can't be opened: an encrypted key needs {pw_var} (and the right one), "
                f"and both files must be PEM ({exc})"
            ) from None
        raise SettingsError(f"{cert_var}={cert}, {key_var}={key}: can't be loaded: {exc}") from None


def _ca(var: str, path: str | None) -> None:
    _file(var, path)
    if path is None:
        return
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        raise SettingsError(f"{var}={path}: not a PEM CA bundle: {exc}") from None


def _check_kafka(s: Settings) -> None:
    _check_kafka_tls(s)
    _check_kafka_sasl(s)
    _check_kafka_oauthbearer(s)


def _check_kafka_tls(s: Settings) -> None:
    tls = s.kafka_security_protocol in ("SSL", "SASL_SSL")
    tls_set = _given(
        ("KAFKA_SSL_CA_LOCATION", s.kafka_ssl_ca_location),
        ("KAFKA_SSL_CERTIFICATE_LOCATION", s.kafka_ssl_certificate_location),
        ("KAFKA_SSL_KEY_LOCATION", s.kafka_ssl_key_location),
        ("KAFKA_SSL_KEY_PASSWORD", s.kafka_ssl_key_password),
    )
    if tls_set and not tls:
        raise SettingsError(
            f"{tls_set[0]}: set, but KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol} uses no TLS "
            "(SSL or SASL_SSL does)"
        )
    _ca("KAFKA_SSL_CA_LOCATION", s.kafka_ssl_ca_location)
    _key_pair(
        "KAFKA_SSL_CERTIFICATE_LOCATION",
        s.kafka_ssl_certificate_location,
        "KAFKA_SSL_KEY_LOCATION",
        s.kafka_ssl_key_location,
        s.kafka_ssl_key_password.get(),
        "KAFKA_SSL_KEY_PASSWORD",
    )


def _check_kafka_sasl(s: Settings) -> None:
    sasl = s.kafka_security_protocol.startswith("SASL")
    mechanism = s.kafka_sasl_mechanism
    if sasl and not mechanism:
        raise SettingsError(f"KAFKA_SASL_MECHANISM: required with KAFKA_SECURITY_PROTOCOL={s.kafka_security_protocol}")
    if mechanism and not sasl:
        raise SettingsError(
            f"KAFKA_SASL_MECHANISM={mechanism}: needs KAFKA_SECURITY_PROTOCOL SASL_SSL (or SASL_PLAINTEXT), "
            f"not {s.kafka_security_protocol}"
        )
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        reason = f"KAFKA_SASL_MECHANISM={mechanism}"
        _require(reason, ("KAFKA_SASL_USERNAME", s.kafka_sasl_username), ("KAFKA_SASL_PASSWORD", s.kafka_sasl_password))


def _check_kafka_oauthbearer(s: Settings) -> None:
    mechanism, method = s.kafka_sasl_mechanism, s.kafka_sasl_oauthbearer_method
    if mechanism == "OAUTHBEARER" and not method:
        raise SettingsError(
            "KAFKA_SASL_OAUTHBEARER_METHOD: required with KAFKA_SASL_MECHANISM=OAUTHBEARER (oidc or aws-msk-iam)"
        )
    if method and mechanism != "OAUTHBEARER":
        raise SettingsError(f"KAFKA_SASL_OAUTHBEARER_METHOD={method}: needs KAFKA_SASL_MECHANISM=OAUTHBEARER")
    if method == "oidc":
        _require(
            "KAFKA_SASL_OAUTHBEARER_METHOD=oidc",
            ("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", s.kafka_oidc_client_id),
            ("KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", s.kafka_oidc_client_secret),
            ("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", s.kafka_oidc_token_endpoint_url),
        )
        url = s.kafka_oidc_token_endpoint_url or ""
        if not re.match(r"https?://", url):
            raise SettingsError(f"KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL={url}: must be an http(s) URL")
    if method == "aws-msk-iam":
        if s.kafka_security_protocol != "SASL_SSL":
            raise SettingsError("KAFKA_SASL_OAUTHBEARER_METHOD=aws-msk-iam: needs KAFKA_SECURITY_PROTOCOL=SASL_SSL")
        if not msk_region(s):
            raise SettingsError("KAFKA_MSK_IAM_REGION: required with aws-msk-iam (or set AWS_REGION)")
        try:
            import aws_msk_iam_sasl_signer  # noqa: F401
        except ImportError:
            raise SettingsError(
                "KAFKA_SASL_OAUTHBEARER_METHOD=aws-msk-iam: the AWS signer library "
                "(aws-msk-iam-sasl-signer-python, in requirements.txt) is not installed"
            ) from None
    msk_only = _given(
        ("KAFKA_MSK_IAM_ROLE_ARN", s.kafka_msk_iam_role_arn), ("KAFKA_MSK_IAM_REGION", s.kafka_msk_iam_region)
    )
    if msk_only and method != "aws-msk-iam":
        raise SettingsError(f"{msk_only[0]}: set, but KAFKA_SASL_OAUTHBEARER_METHOD is not aws-msk-iam")


def _check_postgres(s: Settings) -> None:
    _ca("PG_SSLROOTCERT", s.pg_sslrootcert)
    _key_pair("PG_SSLCERT", s.pg_sslcert, "PG_SSLKEY", s.pg_sslkey, s.pg_sslpassword.get(), "PG_SSLPASSWORD")
    if s.pg_sslmode == "disable" and (s.pg_sslcert or s.pg_sslrootcert):
        raise SettingsError("PG_SSLMODE=disable: PG_SSLCERT and PG_SSLROOTCERT need TLS")
    if s.pg_sslmode in ("verify-ca", "verify-full") and not s.pg_sslrootcert:
        raise SettingsError(f"PG_SSLROOTCERT: required with PG_SSLMODE={s.pg_sslmode} (the CA that signed the server)")


def _check_cql(s: Settings) -> None:
    tls_set = _given(
        ("SCYLLA_SSL_CA", s.scylla_ssl_ca),
        ("SCYLLA_SSL_CERTFILE", s.scylla_ssl_certfile),
        ("SCYLLA_SSL_KEYFILE", s.scylla_ssl_keyfile),
        ("SCYLLA_SSL_KEY_PASSWORD", s.scylla_ssl_key_password),
    )
    if tls_set and not s.scylla_ssl:
        raise SettingsError(f"{tls_set[0]}: set, but SCYLLA_SSL is false")
    _ca("SCYLLA_SSL_CA", s.scylla_ssl_ca)
    _key_pair(
        "SCYLLA_SSL_CERTFILE",
        s.scylla_ssl_certfile,
        "SCYLLA_SSL_KEYFILE",
        s.scylla_ssl_keyfile,
        s.scylla_ssl_key_password.get(),
        "SCYLLA_SSL_KEY_PASSWORD",
    )


def msk_region(s: Settings) -> str | None:
    """KAFKA_MSK_IAM_REGION, else the region AWS's own tools read."""
    return s.kafka_msk_iam_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


ENV_NAMES: tuple[str, ...] = tuple(f.metadata["env"] for f in fields(Settings) if f.metadata["env"])
