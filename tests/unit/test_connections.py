"""Connection settings: what each option turns into for librdkafka, psycopg and the CQL
driver (flows/connections.py), and every setting that can't work refused at start, by name,
without its secret (flows/settings.py). Certificates are made as the local stack makes them (stack/tls.py)."""

from __future__ import annotations

import base64
import ssl
import urllib.parse
from pathlib import Path

import pytest

from flows import connections
from flows.errors import SettingsError
from flows.settings import Settings
from stack import tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tls.ensure(tmp_path_factory.mktemp("tls"))


def mtls(d: Path, name: str = "client", password: str = tls.CLIENT_KEY_PASSWORD) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": str(d / "ca.pem"),
        "KAFKA_SSL_CERTIFICATE_LOCATION": str(d / f"{name}.crt"),
        "KAFKA_SSL_KEY_LOCATION": str(d / f"{name}.key"),
        "KAFKA_SSL_KEY_PASSWORD": password,
    }


def oauthbearer(method: str | None = None, **more: str) -> dict[str, str]:
    """SASL_SSL with OAUTHBEARER (and `method`), plus `more` settings."""
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "OAUTHBEARER", **more}
    return env | ({"KAFKA_SASL_OAUTHBEARER_METHOD": method} if method else {})


def refused(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    return str(caught.value)


def test_kafka_client_certificate(certs: Path) -> None:
    conf = connections.kafka_common(Settings.from_env(mtls(certs)))
    assert conf["security.protocol"] == "SSL"
    assert conf["ssl.certificate.location"].endswith("client.crt")
    assert conf["ssl.key.location"].endswith("client.key")
    assert conf["ssl.key.password"] == tls.CLIENT_KEY_PASSWORD
    assert conf["ssl.endpoint.identification.algorithm"] == "https"


def test_kafka_scram_and_oidc() -> None:
    scram = connections.kafka_common(
        Settings.from_env(
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            }
        )
    )
    assert (scram["sasl.mechanism"], scram["sasl.username"], scram["sasl.password"]) == ("SCRAM-SHA-512", "u", "p")
    oidc = Settings.from_env(
        oauthbearer(
            "oidc",
            KAFKA_SASL_OAUTHBEARER_CLIENT_ID="pipeline",
            KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET="s3cret",
            KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL="https://idp.example/token",
            KAFKA_SASL_OAUTHBEARER_SCOPE="kafka",
        )
    )
    conf = connections.kafka_common(oidc)
    assert conf["sasl.oauthbearer.method"] == "oidc"
    assert conf["sasl.oauthbearer.client.secret"] == "s3cret"
    assert conf["sasl.oauthbearer.scope"] == "kafka"
    assert "s3cret" not in repr(oidc) and "s3cret" not in str(oidc.describe())


def test_msk_iam_token_is_a_sigv4_presigned_connect_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token provider librdkafka calls: AWS's signer with credentials from the default
    chain (here the environment). It signs offline; whether MSK accepts it can't be shown here."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings = Settings.from_env(oauthbearer("aws-msk-iam", KAFKA_MSK_IAM_REGION="eu-west-1"))
    conf = connections.kafka_common(settings)
    assert "sasl.oauthbearer.method" not in conf  # librdkafka's default method: the callback
    token, expiry = conf["oauth_cb"]("")
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parsed = urllib.parse.urlparse(url)
    query = urllib.parse.parse_qs(parsed.query)
    assert parsed.netloc == "kafka.eu-west-1.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIAEXAMPLEKEY/")
    assert "/eu-west-1/kafka-cluster/aws4_request" in query["X-Amz-Credential"][0]
    assert len(query["X-Amz-Signature"][0]) == 64
    import time

    assert time.time() + 60 < expiry <= time.time() + 900 + 5


def test_any_librdkafka_property_by_prefix() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_CLIENT_SOCKET_KEEPALIVE_ENABLE": "true",
            "KAFKA_CLIENT_CLIENT_DNS_LOOKUP": "use_all_dns_ips",
            "KAFKA_CLIENT_SSL_KEYSTORE_PASSWORD": "hunter2",
        }
    )
    conf = connections.kafka_common(settings)
    assert conf["socket.keepalive.enable"] == "true"
    assert conf["client.dns.lookup"] == "use_all_dns_ips"
    assert "hunter2" not in str(settings.describe())
    assert "ssl.keystore.password=****" in settings.describe()["KAFKA_CLIENT_*"]
    kerberos = Settings.from_env({"KAFKA_CLIENT_SASL__KERBEROS___X": "1"})
    assert connections.kafka_common(kerberos)["sasl_kerberos-x"] == "1"


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ("KAFKA_CLIENT_ENABLE_AUTO_COMMIT", "set by the pipeline for its guarantees"),
        ("KAFKA_CLIENT_ISOLATION_LEVEL", "set by the pipeline for its guarantees"),
        ("KAFKA_CLIENT_SASL_PASSWORD", "is set by KAFKA_SASL_PASSWORD"),
        ("KAFKA_CLIENT_BOOTSTRAP_SERVERS", "is set by KAFKA_BOOTSTRAP_SERVERS"),
        ("KAFKA_CLIENT_ERROR_CB", "set by the pipeline"),
    ],
)
def test_properties_the_pipeline_owns_are_refused(var: str, message: str) -> None:
    assert message in refused({var: "x"})


def test_file_and_pairing_checks(certs: Path) -> None:
    assert "KAFKA_SSL_CA_LOCATION=/nope/ca.pem: no such file" in refused(
        {**mtls(certs), "KAFKA_SSL_CA_LOCATION": "/nope/ca.pem"}
    )
    env = mtls(certs)
    del env["KAFKA_SSL_KEY_LOCATION"]
    assert "KAFKA_SSL_KEY_LOCATION: required with KAFKA_SSL_CERTIFICATE_LOCATION" in refused(env)
    wrong = refused(mtls(certs, password="wrong-password"))
    assert "KAFKA_SSL_KEY_LOCATION=" in wrong and "needs KAFKA_SSL_KEY_PASSWORD" in wrong
    assert "wrong-password" not in wrong
    mismatched = {**mtls(certs), "KAFKA_SSL_KEY_LOCATION": str(certs / "kafka.key")}
    assert "not the private key of KAFKA_SSL_CERTIFICATE_LOCATION" in refused(mismatched)
    assert "not a PEM CA bundle" in refused({**mtls(certs), "KAFKA_SSL_CA_LOCATION": str(certs / "VERSION")})


def test_options_of_a_protocol_not_in_use_are_refused(certs: Path) -> None:
    assert "uses no TLS" in refused({**mtls(certs), "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
    assert "KAFKA_SASL_MECHANISM=PLAIN: needs KAFKA_SECURITY_PROTOCOL SASL_SSL" in refused(
        {"KAFKA_SASL_MECHANISM": "PLAIN"}
    )
    assert "KAFKA_SASL_PASSWORD: required with KAFKA_SASL_MECHANISM=SCRAM-SHA-256" in refused(
        {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KAFKA_SASL_USERNAME": "u"}
    )
    assert "KAFKA_SASL_OAUTHBEARER_METHOD: required" in refused(oauthbearer())
    assert "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL: required" in refused(
        oauthbearer("oidc", KAFKA_SASL_OAUTHBEARER_CLIENT_ID="c", KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET="s")
    )
    assert "needs KAFKA_SECURITY_PROTOCOL=SASL_SSL" in refused(
        oauthbearer("aws-msk-iam", KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_MSK_IAM_REGION="us-east-1")
    )
    assert "SCYLLA_SSL_CA: set, but SCYLLA_SSL is false" in refused({"SCYLLA_SSL_CA": str(certs / "ca.pem")})
    assert "PG_SSLROOTCERT: required with PG_SSLMODE=verify-full" in refused({"PG_SSLMODE": "verify-full"})
    assert "PG_SSLMODE='verify_full': must be one of" in refused({"PG_SSLMODE": "verify_full"})


def test_postgres_and_cql_tls(certs: Path) -> None:
    settings = Settings.from_env(
        {
            "PG_SSLMODE": "verify-full",
            "PG_SSLROOTCERT": str(certs / "ca.pem"),
            "PG_SSLCERT": str(certs / "client.crt"),
            "PG_SSLKEY": str(certs / "client.key"),
            "PG_SSLPASSWORD": tls.CLIENT_KEY_PASSWORD,
            "SCYLLA_SSL": "true",
            "SCYLLA_SSL_CA": str(certs / "ca.pem"),
            "SCYLLA_SSL_CERTFILE": str(certs / "client.crt"),
            "SCYLLA_SSL_KEYFILE": str(certs / "client.key"),
            "SCYLLA_SSL_KEY_PASSWORD": tls.CLIENT_KEY_PASSWORD,
        }
    )
    kwargs = connections.pg_connect_kwargs(settings)
    assert kwargs["sslmode"] == "verify-full" and kwargs["sslcert"].endswith("client.crt")
    assert kwargs["sslpassword"] == tls.CLIENT_KEY_PASSWORD
    ctx = connections.cql_ssl_context(settings)
    assert ctx is not None and ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    off = Settings.from_env({"SCYLLA_SSL": "true", "SCYLLA_SSL_CHECK_HOSTNAME": "false"})
    ctx = connections.cql_ssl_context(off)
    assert ctx is not None and not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    for secret_var in ("PG_SSLPASSWORD", "SCYLLA_SSL_KEY_PASSWORD"):
        assert settings.describe()[secret_var] == "****"


def test_the_start_up_line_says_how_each_dependency_is_reached(certs: Path) -> None:
    plain = connections.modes(Settings.from_env({}))
    assert plain == {"kafka": "PLAINTEXT", "postgresql": "sslmode=prefer (libpq's default)", "cassandra": "plaintext"}
    secured = Settings.from_env(
        {
            **oauthbearer(
                "oidc",
                KAFKA_SASL_OAUTHBEARER_CLIENT_ID="pipeline",
                KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET="s3cret",
                KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL="https://idp.example/token",
            ),
            "PG_DSN": "postgresql://u@db/e?sslmode=verify-full",
            "SCYLLA_SSL": "true",
            "SCYLLA_SSL_CHECK_HOSTNAME": "false",
        }
    )
    modes = connections.modes(secured)
    assert modes == {
        "kafka": "SASL_SSL OAUTHBEARER (oidc)",
        "postgresql": "sslmode=verify-full",
        "cassandra": "TLS, hostname not checked",
    }
    assert "s3cret" not in str(modes)


def test_the_start_up_line_names_the_registry_when_a_format_uses_it(certs: Path) -> None:
    registry = Settings.from_env(
        {
            "INPUT_FORMAT": "avro",
            "SCHEMA_REGISTRY_URL": "https://registry.example/apis/ccompat/v7",
            "SCHEMA_REGISTRY_USERNAME": "pipeline",
            "SCHEMA_REGISTRY_PASSWORD": "s3cret",
        }
    )
    modes = connections.modes(registry)
    assert modes["schema_registry"] == "https, basic auth"
    assert "s3cret" not in str(modes) and registry.describe()["SCHEMA_REGISTRY_PASSWORD"] == "****"
    plain = Settings.from_env({"OUTPUT_FORMAT": "protobuf", "SCHEMA_REGISTRY_BEARER_TOKEN": "t0ken"})
    assert connections.modes(plain)["schema_registry"] == "http (plaintext), bearer token"
