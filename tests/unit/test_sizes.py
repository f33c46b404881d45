"""flows.sizes: record sizes as librdkafka and the broker count them, and the topic rule."""

from flows.core.sizes import ADDED_ROOM_BYTES, TopicSize, record_size, size_problems, topic_sizes_to_create, value_fits


def test_record_size_counts_key_value_headers_and_overheads() -> None:
    assert record_size(None, None, []) == 97
    assert record_size(b"k", b"vv", [("name", b"val"), ("n", None)]) == 97 + 1 + 2 + (10 + 4 + 3) + (10 + 1)
    assert record_size(None, b"", [("é", b"")]) == 97 + 10 + 2  # names count in UTF-8 bytes


def test_topics_the_project_creates_satisfy_the_rule() -> None:
    for limit in (1000, 100_000, 1_048_576, 64 * 1024 * 1024):
        inp, out = topic_sizes_to_create(limit)
        assert not size_problems(
            limit,
            TopicSize("INPUT_TOPIC", "i", inp),
            TopicSize("OUTPUT_TOPIC", "o", out),
            TopicSize("FAILURE_TOPIC", "f", out),
        )


def test_each_broken_rule_names_the_topic_its_size_and_the_size_it_needs() -> None:
    inp = TopicSize("INPUT_TOPIC", "events", 2_000_000)
    out = TopicSize("OUTPUT_TOPIC", "events.enriched", 1_048_588, broker_default=True)
    fail = TopicSize("FAILURE_TOPIC", "events.failed", 2_000_000)
    problems = size_problems(1_048_576, inp, out, fail)
    assert problems == [
        f"FAILURE_TOPIC events.failed accepts 2000000 bytes, needs {2_000_000 + ADDED_ROOM_BYTES} (what INPUT_TOPIC "
        f"events accepts, or a value of MAX_VALUE_BYTES, plus {ADDED_ROOM_BYTES} for the failure headers)",
        f"OUTPUT_TOPIC events.enriched accepts 1048588 bytes (the broker's default), needs "
        f"{2_000_000 + ADDED_ROOM_BYTES} (what INPUT_TOPIC events accepts, or a value of MAX_VALUE_BYTES, plus "
        f"{ADDED_ROOM_BYTES} for what enrichment adds)",
    ]
    small_input = size_problems(
        1_048_576,
        TopicSize("INPUT_TOPIC", "events", 1_048_588, True),
        TopicSize("OUTPUT_TOPIC", "o", 2_000_000),
        TopicSize("FAILURE_TOPIC", "f", 2_000_000),
    )
    assert small_input == [
        f"INPUT_TOPIC events accepts 1048588 bytes (the broker's default), needs "
        f"{value_fits(1_048_576)} to take a value of MAX_VALUE_BYTES=1048576 (lower MAX_VALUE_BYTES "
        "or raise the topic's max.message.bytes)"
    ]
