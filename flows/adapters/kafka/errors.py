"""Which Kafka errors are which: the one list of errors that may pass, and the ones that
refuse a record for what it is."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from flows.retry import Kind, network_kind

# a broker restarting, a leader moving, a slow network: librdkafka reconnects by itself
TRANSIENT = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)
# what a broker says about one record (or the batch it was in) that no retry will change:
# too large for the topic, or invalid for it (a record without a key for a compacted topic)
# (`_INVALID_DIFFERENT_RECORD`: a message refused only for sharing its batch with an invalid
# one, KIP-467; sent again alone it passes)
RECORD_REFUSALS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError._INVALID_DIFFERENT_RECORD,
    }
)


def error_kind(err: KafkaError) -> Kind:
    """What a Kafka error means for the flow."""
    if err.fatal():
        return Kind.FATAL
    code = err.code()
    if code in RECORD_REFUSALS:
        return Kind.RECORD
    if err.retriable() or code in TRANSIENT:
        return Kind.RETRIABLE
    return Kind.FATAL


def classify(exc: BaseException) -> Kind:
    """`flows.retry`'s view of an exception from confluent-kafka."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return error_kind(exc.args[0])
    return network_kind(exc)
