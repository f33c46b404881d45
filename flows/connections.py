"""How every client connects to its server: the options each client library is given,
built from the settings: librdkafka's (brokers, TLS, client certificates, SASL
PLAIN/SCRAM/OAUTHBEARER with OIDC or Amazon MSK IAM, KAFKA_CLIENT_* properties), psycopg's
(password, TLS) and the CQL driver's TLS context (docs/configuration.md, "Connections").

The dataflow, the Lambda, `ops` and the tools all build their clients from these, so an
option added here reaches every program. The options are checked where the settings are
read (`flows/settings.py`, which never imports this module): a `Settings` is one whose every
connection option can work. No message here quotes a secret.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from flows.settings import Settings, msk_region


def _with_values(*options: tuple[str, object]) -> dict[str, Any]:
    """The (name, value) pairs that have a value, as a client's options."""
    return {name: value for name, value in options if value}


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


def modes(s: Settings) -> dict[str, str]:
    """How the pipeline talks to each dependency, for the start-up line: the security
    protocol and mechanism, TLS or not, a client certificate or not (never a secret)."""
    kafka = s.kafka_security_protocol
    if s.kafka_sasl_mechanism:
        kafka += f" {s.kafka_sasl_mechanism}"
        if s.kafka_sasl_mechanism == "OAUTHBEARER" and s.kafka_sasl_oauthbearer_method:
            kafka += f" ({s.kafka_sasl_oauthbearer_method})"
    if s.kafka_ssl_certificate_location:
        kafka += ", client certificate"
    from flows.settings import parse_dsn

    sslmode = s.pg_sslmode or parse_dsn(s.pg_dsn.get()).get("sslmode") or "prefer (libpq's default)"
    postgres = f"sslmode={sslmode}" + (", client certificate" if s.pg_sslcert else "")
    if s.scylla_ssl:
        cql = "TLS" + (", client certificate" if s.scylla_ssl_certfile else "")
        cql += "" if s.scylla_ssl_check_hostname else ", hostname not checked"
    else:
        cql = "plaintext"
    found = {"kafka": kafka, "postgresql": postgres, "cassandra": cql}
    if s.input_format != "json" or s.output_format != "json":
        registry = "https" if s.schema_registry_url.startswith("https://") else "http (plaintext)"
        if s.schema_registry_username:
            registry += ", basic auth"
        elif s.schema_registry_bearer_token:
            registry += ", bearer token"
        if s.schema_registry_ssl_certificate_location:
            registry += ", client certificate"
        found["schema_registry"] = registry
    return found
