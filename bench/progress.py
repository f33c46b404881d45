"""The progress display: one line rewritten in place on a terminal, a line every few seconds
otherwise (logs, CI). Counts come from the topics' high watermarks, so every variant is
followed the same way without its cooperation."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition

from bench.proc import Monitored
from flows import connections
from flows.settings import Settings


class Display:
    def __init__(self, every_s: float = 5.0) -> None:
        self.tty = sys.stderr.isatty()
        self.every_s = every_s
        self._last = 0.0
        self._width = 0

    def show(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r" + text.ljust(self._width))
            self._width = len(text)
            sys.stderr.flush()
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            print("  " + text, file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        if self.tty and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
        self._width = 0
        self._last = 0.0
        print(text, file=sys.stderr, flush=True)


class Watermarks:
    """Messages in a set of topics (sum of high watermarks; fresh topics start at 0)."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = Consumer(
            {**connections.kafka_common(settings), "group.id": "bench-watermarks-unused", "enable.auto.commit": False}
        )
        self._parts: dict[str, list[int]] = {}

    def count(self, topics: Iterable[str]) -> int:
        total = 0
        for topic in topics:
            parts = self._parts.get(topic)
            if parts is None:
                md = self._consumer.list_topics(topic, timeout=10).topics[topic]
                parts = self._parts[topic] = sorted(md.partitions)
            for p in parts:
                total += self._high(TopicPartition(topic, p))
        return total

    def _high(self, tp: TopicPartition) -> int:
        # a topic created a moment ago may answer "not leader" until metadata settles
        for attempt in range(20):
            try:
                return int(self._consumer.get_watermark_offsets(tp, timeout=10)[1])
            except KafkaException:
                if attempt == 19:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._consumer.close()


class Follow:
    """Show a running variant: outputs so far, rate, the process's CPU and RSS."""

    def __init__(
        self, display: Display, marks: Watermarks, label: str, topics: list[str], target: int | None = None
    ) -> None:
        self.display, self.marks, self.label, self.topics, self.target = display, marks, label, topics, target
        self.started = time.monotonic()
        self._prev: tuple[float, int] | None = None
        self.count = 0

    def tick(self, proc: Monitored | None = None, extra: str = "") -> int:
        now = time.monotonic()
        self.count = self.marks.count(self.topics)
        rate = 0.0
        if self._prev is not None and now > self._prev[0]:
            rate = (self.count - self._prev[1]) / (now - self._prev[0])
        self._prev = (now, self.count)
        done = f"{self.count:,}" + (f"/{self.target:,} ({self.count / self.target:.0%})" if self.target else "")
        text = f"[{self.label}] {done} out, {rate:,.0f}/s"
        if proc is not None and len(proc.samples) >= 2:
            a, b = proc.samples[-min(len(proc.samples), 5)], proc.samples[-1]
            cpu = (b.cpu_s - a.cpu_s) / (b.wall - a.wall) if b.wall > a.wall else 0.0
            text += f", cpu {cpu:.0%}, rss {b.rss_mb:,.0f} MB"
        text += f", {now - self.started:,.0f}s" + (f", {extra}" if extra else "")
        self.display.show(text)
        return self.count
