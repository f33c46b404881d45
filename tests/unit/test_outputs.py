"""flows.app.outputs: every output gets what it selects, in order; re-routed outcomes are
delivered again; shared clients are built once and closed once."""

from collections.abc import Sequence

from flows.app.outputs import Delivery, Output, Shared, enriched, everything, failed
from flows.core.model import Outcome

from .test_kafka_outputs import dead, ok


class Recorder:
    def __init__(self, name: str, log: list[str], reroute: Sequence[Outcome] = ()) -> None:
        self.name, self.log, self.reroute = name, log, list(reroute)
        self.items: list[Outcome] = []

    def write(self, items: Sequence[Outcome]) -> None:
        self.log.append(f"write {self.name} {len(items)}")
        self.items += items

    def flush(self) -> list[Outcome]:
        self.log.append(f"flush {self.name}")
        out, self.reroute = self.reroute, []
        return out

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def test_each_output_gets_what_it_selects_written_first_flushed_in_order_and_rerouted_again() -> None:
    log: list[str] = []
    good, bad, moved = ok(), dead(10), dead(20, offset=9)
    history, out, dlq = Recorder("history", log), Recorder("out", log, [moved]), Recorder("dlq", log)
    delivery = Delivery(
        [
            (Output("history", everything, lambda _: history), history),
            (Output("out", enriched, lambda _: out), out),
            (Output("dlq", failed, lambda _: dlq), dlq),
        ]
    )
    delivery.write([good, bad])
    assert log == [
        "write history 2",
        "write out 1",
        "write dlq 1",
        "flush history",
        "flush out",
        "flush dlq",
        "write history 1",
        "write dlq 1",
        "flush history",
        "flush out",
        "flush dlq",
    ]
    assert history.items == [good, bad, moved] and out.items == [good] and dlq.items == [bad, moved]
    delivery.close()
    assert log[-3:] == ["close dlq", "close out", "close history"]


def test_shared_clients_are_built_once_and_closed_once() -> None:
    built: list[str] = []
    closed: list[str] = []
    shared = Shared()

    def client(sh: Shared) -> str:
        return sh.get("kafka", lambda: built.append("kafka") or "producer", closed.append)

    outputs = [
        Output("a", everything, lambda sh: Recorder(client(sh), [])),
        Output("b", everything, lambda sh: Recorder(client(sh), [])),
    ]
    delivery = Delivery.build(outputs)
    assert built == ["kafka"] and [w.name for _, w in delivery.writers] == ["producer", "producer"]
    delivery.close()
    assert closed == ["producer"]
    assert shared is not None
