"""Live progress of a running dataflow for someone watching a terminal: records in,
enriched, failed by code, the rate, and the consumer group's lag, one line every few
seconds. Read from each process's `/metrics` (the dataflow API) and from Kafka.

    python -m tools.watch [--ports 3030,3031] [--every 5]

`make run` shows it by itself (tools/run_local.py --watch).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from flows import connections
from flows.settings import Settings


@dataclass
class Sample:
    """The processes' counters summed, and the group's lag (None: not known)."""

    at: float
    records_in: int = 0
    enriched: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lag: int | None = None
    answering: int = 0


def scrape(port: int, into: Sample, timeout: float = 2.0) -> None:
    """Add one process's counters to `into` (nothing when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:  # noqa: S310
            text = resp.read().decode()
    except OSError:
        return
    into.answering += 1
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "enrichment_records_in_total":
                into.records_in += int(s.value)
            elif s.name == "enrichment_records_enriched_total":
                into.enriched += int(s.value)
            elif s.name == "enrichment_records_failed_total" and s.value:
                into.failed[s.labels.get("code", "?")] += int(s.value)


def group_lag(consumer: Consumer, topic: str) -> int | None:
    """Records after the group's committed offsets, over the topic's partitions."""
    try:
        meta = consumer.list_topics(topic, timeout=5).topics[topic]
        parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=5)}
        lag = 0
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=5)
            done = committed.get(tp.partition, -1)
            lag += high - (done if done >= 0 else low)
        return lag
    except (KafkaException, KeyError):
        return None


def line(before: Sample | None, now: Sample) -> str:
    """One human line: totals, the rate since the last sample, the failures by code, the lag."""
    rate = ""
    if before is not None and now.at > before.at:
        rate = f" ({(now.records_in - before.records_in) / (now.at - before.at):,.0f}/s)"
    failed = sum(now.failed.values())
    codes = ", ".join(f"{c} {n:,}" for c, n in now.failed.most_common()) if failed else ""
    lag = "?" if now.lag is None else f"{now.lag:,}"
    return (
        f"in {now.records_in:,}{rate} | enriched {now.enriched:,} | failed {failed:,}"
        + (f" ({codes})" if codes else "")
        + f" | lag {lag}"
        + ("" if now.answering else " | no process answers yet")
    )


class Watch:
    """Samples the processes on `ports` and the group of `settings`."""

    def __init__(self, settings: Settings, ports: Sequence[int]) -> None:
        self.settings = settings
        self.ports = list(ports)
        self._consumer = Consumer(
            {**connections.kafka_common(settings), "group.id": settings.consumer_group, "enable.auto.commit": False}
        )
        self.last: Sample | None = None

    def sample(self) -> Sample:
        now = Sample(time.monotonic())
        for port in self.ports:
            scrape(port, now)
        now.lag = group_lag(self._consumer, self.settings.input_topic)
        return now

    def tick(self) -> str:
        """The next line."""
        now = self.sample()
        text = line(self.last, now)
        self.last = now
        return text

    def close(self) -> None:
        self._consumer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.watch", description=__doc__.split("\n")[0])
    parser.add_argument("--ports", default="3030", help="the processes' dataflow API ports, comma-separated")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between lines")
    args = parser.parse_args(argv)
    watch = Watch(Settings.from_env(), [int(p) for p in args.ports.split(",") if p.strip()])
    try:
        while True:
            print(f"progress: {watch.tick()}", flush=True)
            time.sleep(args.every)
    except KeyboardInterrupt:
        return 0
    finally:
        watch.close()


if __name__ == "__main__":
    sys.exit(main())
