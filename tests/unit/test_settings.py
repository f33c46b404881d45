import pytest

from flows import connections
from flows.errors import SettingsError
from flows.settings import Settings, redact_dsn


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.kafka_bootstrap_servers, s.input_topic, s.output_topic, s.failure_topic) == (
        "127.0.0.1:9092",
        "events",
        "events.enriched",
        "events.failed",
    )
    assert s.pg_dsn.get() == "postgresql://postgres@127.0.0.1:5432/enrichment"
    assert (s.scylla_hosts, s.scylla_port, s.scylla_keyspace) == (("127.0.0.1",), 9042, "enrichment")
    assert (s.stop_at_end, s.log_level, s.max_value_bytes) == (False, "INFO", 1048576)
    # under stock Cassandra's batch failure threshold (50 KiB) and ScyllaDB's warning (128 KiB)
    assert (s.history_batch_rows, s.history_batch_bytes) == (50, 40960)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SCYLLA_PORT": "nine"}, "SCYLLA_PORT='nine': expected an integer"),
        ({"STOP_AT_END": "maybe"}, "STOP_AT_END='maybe': expected true or false"),
        ({"INPUT_TOPIC": "bad topic"}, "INPUT_TOPIC='bad topic'"),
        ({"OUTPUT_TOPIC": "events"}, "must differ"),
        ({"CACHE_MAX_SIZE": "-1"}, "CACHE_MAX_SIZE='-1': must be >= 0"),
        ({"SCYLLA_KEYSPACE": "x;DROP"}, "SCYLLA_KEYSPACE"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD'"),
        ({"HISTORY_BATCH_ROWS": "0"}, "HISTORY_BATCH_ROWS='0': must be"),
        ({"HISTORY_BATCH_BYTES": "100"}, "HISTORY_BATCH_BYTES='100': must be"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert needle in str(err.value)


def test_secrets_never_show() -> None:
    s = Settings.from_env(
        {
            "PG_DSN": "postgresql://u:hunter2@db/x",
            "KAFKA_SASL_PASSWORD": "hunter2",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "u",
            "SCYLLA_PASSWORD": "hunter2",
        }
    )
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.describe())
    assert connections.kafka_common(s)["sasl.password"] == "hunter2"
    assert redact_dsn("host=db password=hunter2 user=u") == "user=u password=**** host=db"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgres:hunter2@db/x",  # no scheme: libpq reads it as key=value pairs and quotes it
        "postgresql://u:hunter2%zz@db/x",  # bad percent-encoding
        "host=db password=hunter 2 user=u",  # unquoted space in a key=value pair
        "host=db password='hunter2",  # unterminated quote
    ],
)
def test_a_dsn_that_does_not_parse_is_never_printed(dsn: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"PG_DSN": dsn})
    assert "hunter" not in str(err.value) and "PG_DSN=(hidden)" in str(err.value)
    assert "hunter" not in redact_dsn(dsn)


def test_a_parsed_dsn_is_shown_without_its_password() -> None:
    assert redact_dsn("postgresql://u:hunter2@db:5433/x?sslmode=require") == "postgresql://u:****@db:5433/x"
    assert redact_dsn("host=db password='a b\\' c' user=u") == "user=u password=**** host=db"


def test_processing_guarantee_and_its_settings() -> None:
    s = Settings.from_env({})
    assert (s.processing_guarantee, s.consumer_group, s.exactly_once) == ("at-least-once", "enrichment", False)
    e = Settings.from_env({"PROCESSING_GUARANTEE": "exactly-once", "CONSUMER_GROUP": "g1"})
    assert e.exactly_once and e.consumer_group == "g1" and e.commit_interval_ms == 100
    with pytest.raises(SettingsError, match="PROCESSING_GUARANTEE"):
        Settings.from_env({"PROCESSING_GUARANTEE": "exactly_once"})
    # a transaction must be able to commit well within the time the broker gives it
    with pytest.raises(SettingsError, match="COMMIT_INTERVAL_MS=20000: must be under half of TRANSACTION_TIMEOUT_MS"):
        Settings.from_env({"PROCESSING_GUARANTEE": "exactly-once", "COMMIT_INTERVAL_MS": "20000"})
    with pytest.raises(SettingsError, match="KAFKA_SESSION_TIMEOUT_MS"):
        Settings.from_env({"KAFKA_SESSION_TIMEOUT_MS": "1000"})
