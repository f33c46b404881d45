"""Fixtures for tests against the real local stack (`make up`): Kafka, PostgreSQL, Cassandra.

A server that does not answer fails the test run loudly; integration tests are never skipped.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from cassandra.cluster import Cluster, Session
from cassandra.policies import ExponentialReconnectionPolicy
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flows.settings import Settings

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PG_DSN = os.environ.get("PG_DSN", "postgresql://postgres@127.0.0.1:5432/enrichment")
CQL_HOST = os.environ.get("SCYLLA_HOSTS", "127.0.0.1").split(",")[0]
CQL_PORT = int(os.environ.get("SCYLLA_PORT", "9042"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def admin() -> AdminClient:
    client = AdminClient({"bootstrap.servers": BOOTSTRAP})
    try:
        client.list_topics(timeout=10)
    except Exception as exc:  # pragma: no cover - environment problem
        pytest.fail(f"Kafka at {BOOTSTRAP} does not answer ({exc}); run `make up`")
    return client


@pytest.fixture(scope="session")
def pg_conninfo() -> str:
    try:
        with psycopg.connect(PG_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # pragma: no cover
        pytest.fail(f"PostgreSQL at {PG_DSN} does not answer ({exc}); run `make up`")
    return PG_DSN


@pytest.fixture(scope="session")
def cql() -> Iterator[Session]:
    logging.getLogger("cassandra").setLevel(logging.ERROR)
    # the fault-injection tests stop Cassandra: come back within seconds, as the dataflow does
    cluster = Cluster(
        [CQL_HOST],
        port=CQL_PORT,
        protocol_version=4,
        reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=5.0),
    )
    try:
        session = cluster.connect()
    except Exception as exc:  # pragma: no cover
        pytest.fail(f"Cassandra at {CQL_HOST}:{CQL_PORT} does not answer ({exc}); run `make up`")
    yield session
    cluster.shutdown()


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_topics(admin: AdminClient, names: list[str], partitions: int) -> None:
    """Create the topics and wait until the broker's metadata has them (the create request
    can answer before its metadata is served: seen once as UNKNOWN_TOPIC_OR_PART just after)."""
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names], operation_timeout=30
    )
    for fut in futures.values():
        fut.result(timeout=30)
    deadline = time.monotonic() + 30
    for name in names:
        while len(admin.list_topics(name, timeout=10).topics[name].partitions) < partitions:
            assert time.monotonic() < deadline, f"topic {name} not in the metadata after 30 s"
            time.sleep(0.2)


@pytest.fixture
def empty_database(pg_conninfo: str) -> Iterator[Settings]:
    """A database of its own on the stack's PostgreSQL (no customers table; nothing another
    test does reaches it, its notifications included): the settings that point at it."""
    name = unique("schema")
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(**{**conninfo_to_dict(pg_conninfo), "dbname": name})
    try:
        yield Settings.from_env({**os.environ, "PG_DSN": dsn})
    finally:
        with psycopg.connect(pg_conninfo, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
