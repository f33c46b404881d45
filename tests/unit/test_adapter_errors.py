"""Each adapter's classification of its client's errors (flows.adapters.*.errors)."""

import psycopg
import psycopg_pool
import pytest
from cassandra import InvalidRequest, OperationTimedOut, Unavailable
from cassandra.cluster import NoHostAvailable
from confluent_kafka import KafkaError, KafkaException

from flows.adapters.kafka.errors import classify as kafka_kind
from flows.adapters.postgres.errors import classify as postgres_kind
from flows.adapters.scylla.errors import classify as cql_kind
from flows.retry import Kind


@pytest.mark.parametrize(
    ("classify", "exc", "kind"),
    [
        (postgres_kind, psycopg.OperationalError("connection refused"), Kind.RETRIABLE),
        (postgres_kind, psycopg_pool.PoolTimeout("no connection"), Kind.RETRIABLE),
        (postgres_kind, psycopg.DataError("NUL"), Kind.RECORD),
        (postgres_kind, psycopg.errors.UntranslatableCharacter("latin1"), Kind.RECORD),
        (postgres_kind, psycopg.errors.UndefinedTable("no table"), Kind.FATAL),
        (postgres_kind, psycopg.errors.InsufficientPrivilege("no"), Kind.FATAL),
        (cql_kind, NoHostAvailable("down", {}), Kind.RETRIABLE),
        (cql_kind, OperationTimedOut(), Kind.RETRIABLE),
        (cql_kind, Unavailable("x"), Kind.RETRIABLE),
        (cql_kind, InvalidRequest("mutation too large"), Kind.RECORD),
        (cql_kind, ValueError("bug"), Kind.FATAL),
        (kafka_kind, KafkaException(KafkaError(KafkaError._TRANSPORT)), Kind.RETRIABLE),
        (kafka_kind, KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)), Kind.RETRIABLE),
        (kafka_kind, KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), Kind.RECORD),
        (kafka_kind, KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), Kind.FATAL),
        (kafka_kind, ConnectionResetError(), Kind.RETRIABLE),
    ],
)
def test_classification(classify, exc: BaseException, kind: Kind) -> None:  # type: ignore[no-untyped-def]
    assert classify(exc) is kind
