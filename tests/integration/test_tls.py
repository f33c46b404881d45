"""Secure connections on real servers: the local stack serves TLS beside plaintext (Kafka's
SSL listener requires a client certificate, its SASL_SSL listener takes SCRAM and
OAUTHBEARER; PostgreSQL's TLS user needs a client certificate and a password; Cassandra
requires a client certificate from TLS clients), all with certificates of the stack's CA
(stack/tls.py).

The dataflow runs end to end through each, and each wrong setting (CA, client certificate,
password) stops it at start with exit status 2 and one line naming the reason, no secret in
its output.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from cassandra.cluster import Session

from flows.adapters.scylla.session import TABLE
from stack import tls
from tools import formats, provision, sample
from tools.kafkautil import produce_all, read_topic

from .flowrun import Topics, run_dataflow

ROOT = Path(__file__).resolve().parents[2]
TLS = Path(os.environ.get("STACK_DIR") or ROOT / ".stack").resolve() / "tls"
N_CUSTOMERS = 20
SECRETS = (tls.CLIENT_KEY_PASSWORD, tls.KAFKA_SCRAM_PASSWORD, tls.PG_TLS_PASSWORD)
# the stack's TLS listeners (their ports are the stack's settings: docs/development.md)
KAFKA_SSL = f"127.0.0.1:{os.environ.get('STACK_KAFKA_SSL_PORT', '9094')}"
KAFKA_SASL_SSL = f"127.0.0.1:{os.environ.get('STACK_KAFKA_SASL_SSL_PORT', '9095')}"
PG_PORT = os.environ.get("STACK_PG_PORT", "5432")


def cert(name: str) -> dict[str, str]:
    return {"crt": str(TLS / f"{name}.crt"), "key": str(TLS / f"{name}.key")}


@pytest.fixture(scope="module", autouse=True)
def stack_has_tls(admin) -> None:  # type: ignore[no-untyped-def]
    if not (TLS / "VERSION").exists():
        pytest.fail(f"no certificates in {TLS}: the stack predates its TLS listeners; run make down && make up")


def kafka_mtls(client: str = "client", ca: str = "ca") -> dict[str, str]:
    c = cert(client)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA_SSL,
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CA_LOCATION": str(TLS / f"{ca}.pem"),
        "KAFKA_SSL_CERTIFICATE_LOCATION": c["crt"],
        "KAFKA_SSL_KEY_LOCATION": c["key"],
        "KAFKA_SSL_KEY_PASSWORD": tls.CLIENT_KEY_PASSWORD,
    }


def kafka_scram(password: str = tls.KAFKA_SCRAM_PASSWORD) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CA_LOCATION": str(TLS / "ca.pem"),
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": tls.KAFKA_SCRAM_USER,
        "KAFKA_SASL_PASSWORD": password,
    }


def pg_tls(client: str | None = "client", ca: str = "ca", password: str = tls.PG_TLS_PASSWORD) -> dict[str, str]:
    env = {
        "PG_DSN": f"postgresql://{tls.PG_TLS_USER}@127.0.0.1:{PG_PORT}/enrichment",
        "PG_PASSWORD": password,
        "PG_SSLMODE": "verify-full",
        "PG_SSLROOTCERT": str(TLS / f"{ca}.pem"),
    }
    if client:
        c = cert(client)
        env |= {"PG_SSLCERT": c["crt"], "PG_SSLKEY": c["key"], "PG_SSLPASSWORD": tls.CLIENT_KEY_PASSWORD}
    return env


def cql_tls(client: str | None = "client", ca: str = "ca", check_hostname: bool = False) -> dict[str, str]:
    """Cassandra's certificate names `localhost` only, and the driver checks the address it
    connects to (an IP): the hostname check is off except where that failure is the test."""
    env = {
        "SCYLLA_HOSTS": "127.0.0.1",
        "SCYLLA_SSL": "true",
        "SCYLLA_SSL_CA": str(TLS / f"{ca}.pem"),
        "SCYLLA_SSL_CHECK_HOSTNAME": str(check_hostname).lower(),
    }
    if client:
        c = cert(client)
        env |= {
            "SCYLLA_SSL_CERTFILE": c["crt"],
            "SCYLLA_SSL_KEYFILE": c["key"],
            "SCYLLA_SSL_KEY_PASSWORD": tls.CLIENT_KEY_PASSWORD,
        }
    return env


REGISTRY_HTTPS = f"https://127.0.0.1:{os.environ.get('STACK_REGISTRY_SSL_PORT', '8443')}/apis/ccompat/v7"


def registry_tls(client: str | None = "client", ca: str = "ca") -> dict[str, str]:
    """Avro in, Protobuf out, through the registry's HTTPS port (a client certificate of the
    stack's CA required)."""
    env = {
        "INPUT_FORMAT": "avro",
        "OUTPUT_FORMAT": "protobuf",
        "SCHEMA_REGISTRY_URL": REGISTRY_HTTPS,
        "SCHEMA_REGISTRY_SSL_CA_LOCATION": str(TLS / f"{ca}.pem"),
    }
    if client:
        c = cert(client)
        env |= {
            "SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION": c["crt"],
            "SCHEMA_REGISTRY_SSL_KEY_LOCATION": c["key"],
            "SCHEMA_REGISTRY_SSL_KEY_PASSWORD": tls.CLIENT_KEY_PASSWORD,
        }
    return env


@pytest.fixture(scope="module")
def topics(pg_conninfo: str) -> Topics:
    """One set of topics, made and filled over plaintext, read by each secure run."""
    made = Topics(partitions=2, prefix="tls").create()
    provision.seed_customers(made.settings, sample.customers(N_CUSTOMERS))
    return made


def run_secure(topics: Topics, env: dict[str, str], records: int) -> tuple[list, list]:  # type: ignore[type-arg]
    """Fresh topics, `records` new inputs, one run to the end with `env`; what the output
    and failure topics hold afterwards (read over plaintext)."""
    out = Topics(partitions=2, prefix="tlsout").create()
    settings = topics.settings
    events = list(sample.events(records, N_CUSTOMERS, bad_ratio=0.2, seed=records))
    produce_all(settings, out.input, events)
    run = run_dataflow(secure_env(topics, out, env))
    assert run.returncode == 0, run.stderr[-3000:]
    for secret in SECRETS:
        assert secret not in run.stdout + run.stderr
    enriched = list(read_topic(settings, out.output))
    failed = list(read_topic(settings, out.failure))
    expected = Counter(r.expect for r in events)
    assert len(enriched) == expected["enriched"] and len(enriched) + len(failed) == records
    return enriched, failed


def secure_env(topics: Topics, out: Topics, env: dict[str, str]) -> dict[str, str]:
    return {
        **out.env,
        **env,
        "STOP_AT_END": "true",
        "STARTUP_TIMEOUT_SECONDS": "10",
        "SCYLLA_KEYSPACE": topics.keyspace,
    }


def run_ops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops", *args, "-q"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def source_topic(messages: list) -> str:  # type: ignore[type-arg]
    return dict(messages[0].headers() or [])["source.topic"].decode()


def topic_env(enriched: list) -> dict[str, str]:  # type: ignore[type-arg]
    """The topics of the run that produced `enriched`."""
    base = source_topic(enriched).removesuffix(".events")
    return {"INPUT_TOPIC": f"{base}.events", "OUTPUT_TOPIC": f"{base}.enriched", "FAILURE_TOPIC": f"{base}.failed"}


def history_rows(cql: Session, topics: Topics, source_topic: str) -> int:
    rows = cql.execute(
        f"SELECT source_offset FROM {topics.keyspace}.{TABLE} WHERE source_topic = %s ALLOW FILTERING",  # noqa: S608
        (source_topic,),
    )
    return len(list(rows))


def test_end_to_end_with_client_certificates_everywhere(topics: Topics, cql: Session) -> None:
    """Kafka over mTLS (an encrypted client key), PostgreSQL verify-full with a client
    certificate and a password, Cassandra with a client certificate (its chain verified,
    the hostname check off: the wrong-CA and hostname cases below show both at work)."""
    secure = {**kafka_mtls(), **pg_tls(), **cql_tls()}
    enriched, _ = run_secure(topics, secure, 60)
    assert all(json.loads(m.value())["customer"]["name"] for m in enriched)  # looked up in PostgreSQL
    assert history_rows(cql, topics, source_topic(enriched)) == 60
    # the operator tools connect the same way
    env = {**secure, **topic_env(enriched), "SCYLLA_KEYSPACE": topics.keyspace}
    reconcile = run_ops(env, "reconcile")
    assert reconcile.returncode == 0, reconcile.stderr[-2000:]
    event_id = json.loads(enriched[0].value())["event_id"]
    h = {k: v.decode() for k, v in enriched[0].headers() or []}
    trace = run_ops(env, "trace", "--source", f"{h['source.topic']}:{h['source.partition']}:{h['source.offset']}")
    assert trace.returncode == 0, trace.stderr[-2000:]
    assert event_id in trace.stdout
    for secret in SECRETS:
        assert secret not in reconcile.stdout + reconcile.stderr + trace.stdout + trace.stderr


def test_end_to_end_through_the_registry_over_tls(topics: Topics, cql: Session) -> None:
    """Avro events (written through the registry's plain port), read and written as Protobuf
    by a dataflow that reaches the registry over HTTPS with a client certificate, and Kafka
    over mTLS; `ops trace` shows the values through the same connection."""
    out = Topics(partitions=2, prefix="tlsreg").create()
    writer = formats.EventWriter("avro", topics.settings, out.input)
    rng = random.Random(7)
    docs = [
        {**sample.good_event(rng, i, sample.customer_id(i % N_CUSTOMERS)), "event_id": f"{out.input}-{i}"}
        for i in range(40)
    ]
    produce_all(topics.settings, out.input, [(None, writer.write(d), []) for d in docs])
    secure = {**kafka_mtls(), **registry_tls()}
    run = run_dataflow(secure_env(topics, out, secure))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "https, client certificate" in run.stderr, run.stderr[-2000:]
    reader = formats.reader("protobuf", topics.settings, out.output)
    enriched = list(read_topic(topics.settings, out.output))
    assert len(enriched) == 40 and not list(read_topic(topics.settings, out.failure))
    assert all(json.loads(reader.read(m.value()))["customer"]["name"] for m in enriched)
    assert history_rows(cql, topics, out.input) == 40
    env = {**secure, **out.env, "SCYLLA_KEYSPACE": topics.keyspace}
    trace = run_ops(env, "trace", docs[0]["event_id"])
    assert trace.returncode == 0, trace.stdout[-2000:] + trace.stderr[-2000:]
    assert "-> enriched" in trace.stdout and "(protobuf)" in trace.stdout
    for secret in SECRETS:
        assert secret not in run.stdout + run.stderr + trace.stdout + trace.stderr


def test_end_to_end_with_scram_over_tls(topics: Topics, cql: Session) -> None:
    enriched, _ = run_secure(topics, kafka_scram(), 30)
    assert history_rows(cql, topics, source_topic(enriched)) == 30


KAFKA_SSL_AT = f"Kafka at {KAFKA_SSL} (SSL): can't connect"
KAFKA_SASL_AT = f"Kafka at {KAFKA_SASL_SSL} (SASL_SSL): can't connect"
CQL_AT = f"ScyllaDB/Cassandra at 127.0.0.1:{os.environ.get('SCYLLA_PORT', '9042')}, TLS: can't connect"
REGISTRY_AT = f"Schema Registry at {REGISTRY_HTTPS}: can't use it"
REGISTRY_REFUSED = "the registry ended the TLS handshake: it refused the client certificate"
REFUSED = {
    "kafka, wrong CA": (
        kafka_mtls(ca="other-ca"),
        KAFKA_SSL_AT,
        "certificate verify failed",
    ),
    "kafka, expired client certificate": (
        kafka_mtls(client="expired"),
        KAFKA_SSL_AT,
        "refused the client certificate",
    ),
    "kafka, client certificate of another CA": (
        kafka_mtls(client="rogue"),
        KAFKA_SSL_AT,
        "refused the client certificate",
    ),
    "kafka, wrong SCRAM password": (
        kafka_scram("wrong"),
        KAFKA_SASL_AT,
        "invalid credentials",
    ),
    "postgres, wrong CA": (pg_tls(ca="other-ca"), "PostgreSQL at", "certificate verify failed"),
    "postgres, expired client certificate": (pg_tls(client="expired"), "PostgreSQL at", "certificate expired"),
    "postgres, no client certificate": (pg_tls(client=None), "PostgreSQL at", "requires a valid client certificate"),
    "postgres, wrong password": (pg_tls(password="wrong"), "PostgreSQL at", "password authentication failed"),
    "cassandra, wrong CA": (cql_tls(ca="other-ca"), CQL_AT, "certificate verify failed"),
    "cassandra, expired client certificate": (cql_tls(client="expired"), CQL_AT, "refused the client certificate"),
    "cassandra, client certificate of another CA": (cql_tls(client="rogue"), CQL_AT, "refused the client certificate"),
    "cassandra, no client certificate": (cql_tls(client=None), CQL_AT, "or it requires one"),
    "registry, wrong CA": (registry_tls(ca="other-ca"), REGISTRY_AT, "certificate verify failed"),
    "registry, no client certificate": (registry_tls(client=None), REGISTRY_AT, REGISTRY_REFUSED),
    "registry, client certificate of another CA": (registry_tls(client="rogue"), REGISTRY_AT, REGISTRY_REFUSED),
    "registry, expired client certificate": (registry_tls(client="expired"), REGISTRY_AT, REGISTRY_REFUSED),
    "cassandra, a certificate without the contact point's IP": (
        cql_tls(check_hostname=True),
        CQL_AT,
        "IP address mismatch, certificate is not valid for '127.0.0.1'",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_wrong_credentials_stop_the_dataflow_at_start(topics: Topics, case: str) -> None:
    env, where, reason = REFUSED[case]
    run = run_dataflow({**topics.env, **env, "STARTUP_TIMEOUT_SECONDS": "4"}, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if where in line]
    assert lines, run.stderr[-2000:]
    assert reason in lines[0], lines[0]
    for secret in SECRETS:
        assert secret not in run.stdout + run.stderr


@pytest.mark.parametrize("case", ["kafka, wrong CA", "kafka, wrong SCRAM password"])
def test_ops_says_why_kafka_refused_it_and_at_once(topics: Topics, case: str) -> None:
    """The operator tools keep librdkafka's reason (they used to print only `Local: Broker
    transport failure`), and a certificate or a password refused ends the wait at once."""
    env, where, reason = REFUSED[case]
    started = time.monotonic()
    run = run_ops({**topics.env, **env, "STARTUP_TIMEOUT_SECONDS": "30"}, "reconcile")
    took = time.monotonic() - started
    assert run.returncode == 2, run.stdout + run.stderr
    assert reason in run.stderr and "Broker transport failure" not in run.stderr, run.stderr
    assert took < 15, f"{took:.1f}s: a refusal is known in a second, not after STARTUP_TIMEOUT_SECONDS"


def test_a_broker_name_its_certificate_does_not_carry_is_named(topics: Topics) -> None:
    """Reached as 127.0.0.2 (a TCP relay to the broker), which its certificate does not name:
    the line says so instead of blaming the CA."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.2", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            a.close()
            b.close()

    def relay() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", int(KAFKA_SSL.rsplit(":", 1)[1])))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=relay, daemon=True).start()
    try:
        env = {
            **topics.env,
            **kafka_mtls(),
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.2:{port}",
            "STARTUP_TIMEOUT_SECONDS": "30",
        }
        run = run_dataflow(env, timeout=120)
    finally:
        listener.close()
    assert run.returncode == 2, run.stderr[-2000:]
    assert "does not name '127.0.0.2' (it names 127.0.0.1, localhost)" in run.stderr, run.stderr[-2000:]


def test_a_key_its_password_does_not_open_is_a_bad_setting(topics: Topics) -> None:
    env = {**kafka_mtls(), "KAFKA_SSL_KEY_PASSWORD": "not-the-password"}
    run = run_dataflow({**topics.env, **env}, timeout=60)
    assert run.returncode == 2
    assert "error: bad setting KAFKA_SSL_KEY_LOCATION=" in run.stderr
    assert "needs KAFKA_SSL_KEY_PASSWORD" in run.stderr
    assert "not-the-password" not in run.stderr


class TokenEndpoint:
    """An OIDC provider's token endpoint (client credentials grant), on a free local port.
    It issues unsigned JWTs (alg none): the local broker checks them with Kafka's default
    validator, where a real cluster checks the provider's signature (its JWKS)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str | None, str]] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                endpoint.requests.append((self.headers.get("Authorization"), body))
                now = int(time.time())
                token = f"{b64({'alg': 'none'})}.{b64({'sub': 'pipeline', 'iat': now, 'exp': now + 3600})}."
                out = json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 3600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/token"


def b64(doc: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


def test_end_to_end_with_oidc_client_credentials(topics: Topics) -> None:
    """librdkafka's built-in OIDC method: it fetches a token with the client id and secret,
    and the broker's SASL_SSL listener takes it (OAUTHBEARER)."""
    idp = TokenEndpoint()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CA_LOCATION": str(TLS / "ca.pem"),
        "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
        "KAFKA_SASL_OAUTHBEARER_METHOD": "oidc",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "pipeline",
        "KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET": "oidc-client-secret",
        "KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": idp.url,
        "KAFKA_SASL_OAUTHBEARER_SCOPE": "kafka",
    }
    enriched, _ = run_secure(topics, env, 20)
    assert enriched
    basic = "Basic " + base64.b64encode(b"pipeline:oidc-client-secret").decode()
    assert idp.requests and all(r == (basic, "grant_type=client_credentials&scope=kafka") for r in idp.requests)
    idp.server.shutdown()


def test_msk_iam_token_reaches_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Amazon MSK can't be reached from here. What can be shown: librdkafka calls the
    provider, which signs with the credentials of the default chain, and sends its token
    over SASL OAUTHBEARER; this broker, not MSK, refuses it, and the start-up check says so."""
    from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

    from flows.adapters.kafka.topics import check_kafka
    from flows.errors import PreflightError
    from flows.settings import Settings

    signed: list[str] = []
    real = MSKAuthTokenProvider.generate_auth_token

    def counted(region: str, aws_debug_creds: bool = False) -> tuple[str, int]:
        token, expiry_ms = real(region)
        signed.append(token)
        return token, expiry_ms

    monkeypatch.setattr(MSKAuthTokenProvider, "generate_auth_token", counted)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": KAFKA_SASL_SSL,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SSL_CA_LOCATION": str(TLS / "ca.pem"),
            "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "KAFKA_SASL_OAUTHBEARER_METHOD": "aws-msk-iam",
            "KAFKA_MSK_IAM_REGION": "eu-west-1",
            "STARTUP_TIMEOUT_SECONDS": "5",
        }
    )
    with pytest.raises(PreflightError) as refused:
        check_kafka(settings, [])
    assert signed, "librdkafka called the token provider"
    assert KAFKA_SASL_AT in str(refused.value)
    assert "SASL authentication error" in str(refused.value) and "invalid_token" in str(refused.value)
    assert "example-secret" not in str(refused.value)
