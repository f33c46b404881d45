"""How every client connects to its server: Kafka's security (TLS, client certificates,
SASL PLAIN/SCRAM/OAUTHBEARER with OIDC or Amazon MSK IAM, any other librdkafka property),
PostgreSQL's TLS and the CQL store's TLS (docs/configuration.md, "Connections").

The dataflow, the Lambda, `ops` and the tools all build their clients from these, so an
option added here reaches every program. `check` runs when the settings are read: a setting
that can't work (a missing file, a certificate without its key, a key its password does not
open, an option of a protocol not in use) is a `SettingsError` naming the variable, before
any client is made. No message here quotes a secret.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from flows.errors import SettingsError

if TYPE_CHECKING:
    from flows.settings import Settings

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
_NAME = re.compile(r"[a-z0-9]+(\.[a-z0-9]+)*")


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


# ---------------------------------------------------------------- checks


def check(settings: Settings) -> None:
    """Every connection option can work: SettingsError naming the first one that can't."""
    _check_kafka(settings)
    _check_postgres(settings)
    _check_cql(settings)


def _given(*settings: tuple[str, object]) -> list[str]:
    """The names of the (name, value) pairs that have a value."""
    return [var for var, value in settings if value]


def _with_values(*options: tuple[str, object]) -> dict[str, Any]:
    """The (name, value) pairs that have a value, as a client's options."""
    return {name: value for name, value in options if value}


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


# ---------------------------------------------------------------- client configurations


def kafka_common(s: Settings) -> dict[str, Any]:
    """librdkafka settings shared by every client: brokers, security, KAFKA_CLIENT_*."""
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap_servers,
        "security.protocol": s.kafka_security_protocol,
        **dict(s.kafka_client_properties),
    }
    if s.kafka_security_protocol in ("SSL", "SASL_SSL"):
        conf["ssl.endpoint.identification.algorithm"] = s.kafka_ssl_endpoint_identification
        conf |= _with_values(
            ("ssl.ca.location", s.kafka_ssl_ca_location),
            ("ssl.certificate.location", s.kafka_ssl_certificate_location),
            ("ssl.key.location", s.kafka_ssl_key_location),
            ("ssl.key.password", s.kafka_ssl_key_password.get()),
        )
    mechanism = s.kafka_sasl_mechanism
    if mechanism:
        conf["sasl.mechanism"] = mechanism
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        conf["sasl.username"] = s.kafka_sasl_username
        conf["sasl.password"] = s.kafka_sasl_password.get()
    if s.kafka_sasl_oauthbearer_method == "oidc":
        conf["sasl.oauthbearer.method"] = "oidc"
        conf["sasl.oauthbearer.client.id"] = s.kafka_oidc_client_id
        conf["sasl.oauthbearer.client.secret"] = s.kafka_oidc_client_secret.get()
        conf["sasl.oauthbearer.token.endpoint.url"] = s.kafka_oidc_token_endpoint_url
        if s.kafka_oidc_scope:
            conf["sasl.oauthbearer.scope"] = s.kafka_oidc_scope
        if s.kafka_oidc_extensions:
            conf["sasl.oauthbearer.extensions"] = s.kafka_oidc_extensions
    elif s.kafka_sasl_oauthbearer_method == "aws-msk-iam":
        conf["oauth_cb"] = msk_token_provider(msk_region(s) or "", s.kafka_msk_iam_role_arn)
    return conf


def msk_region(s: Settings) -> str | None:
    """KAFKA_MSK_IAM_REGION, else the region AWS's own tools read."""
    return s.kafka_msk_iam_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def msk_token_provider(region: str, role_arn: str | None = None) -> Callable[[str], tuple[str, float]]:
    """librdkafka's `oauth_cb` for Amazon MSK IAM: a SigV4-signed token from AWS's signer
    library, with credentials from the default chain (environment, web identity in EKS,
    the Lambda's role, instance profile) or by assuming `role_arn`. librdkafka calls it at
    start and again before the token expires (15 minutes)."""

    def token(_config: str) -> tuple[str, float]:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        if role_arn:
            value, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_role_arn(region, role_arn)
        else:
            value, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
        return value, expiry_ms / 1000

    return token


def pg_connect_kwargs(s: Settings) -> dict[str, Any]:
    """psycopg connection arguments besides the DSN: password and TLS (libpq's names)."""
    return _with_values(
        ("password", s.pg_password.get()),
        ("sslmode", s.pg_sslmode),
        ("sslrootcert", s.pg_sslrootcert),
        ("sslcert", s.pg_sslcert),
        ("sslkey", s.pg_sslkey),
        ("sslpassword", s.pg_sslpassword.get()),
    )


def cql_ssl_context(s: Settings) -> ssl.SSLContext | None:
    """TLS to the CQL hosts (SCYLLA_SSL): the CA (or the system's), the client certificate
    when given, and the hostname check unless SCYLLA_SSL_CHECK_HOSTNAME=false."""
    if not s.scylla_ssl:
        return None
    ctx = ssl.create_default_context(cafile=s.scylla_ssl_ca)
    ctx.check_hostname = s.scylla_ssl_check_hostname
    if s.scylla_ssl_certfile and s.scylla_ssl_keyfile:
        ctx.load_cert_chain(s.scylla_ssl_certfile, s.scylla_ssl_keyfile, password=s.scylla_ssl_key_password.get())
    return ctx
