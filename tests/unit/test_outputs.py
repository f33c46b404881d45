"""flows.app.outputs: every output gets what it selects, in rounds, flushed in order;
re-routed outcomes are delivered again; with a depth, a batch is awaited while the next is
handed over and counted delivered only then; shared clients are built once and closed once."""

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

    def discard(self) -> None:

        pass

    def flush(self) -> list[Outcome]:
        self.log.append(f"flush {self.name}")
        out, self.reroute = self.reroute, []
        return out

    def close(self) -> None:
        self.log.append(f"close {self.name}")


def three(history: Recorder, out: Recorder, dlq: Recorder) -> list[tuple[Output, Recorder]]:
    """The flow's three outputs (every outcome, enriched ones, failed ones), as recorders."""
    return [
        (Output("history", everything, lambda _: history), history),
        (Output("out", enriched, lambda _: out), out),
        (Output("dlq", failed, lambda _: dlq), dlq),
    ]


def test_each_output_gets_what_it_selects_written_first_flushed_in_order_and_rerouted_again() -> None:
    log: list[str] = []
    good, bad, moved = ok(), dead(10), dead(20, offset=9)
    history, out, dlq = Recorder("history", log), Recorder("out", log, [moved]), Recorder("dlq", log)
    delivery = Delivery(three(history, out, dlq))
    delivery.write([good, bad])
    assert log == [
        "write history 2",
        "write out 1",
        "write dlq 1",
        "flush history",
        "flush out",
        "flush dlq",
        "write history 1",
        "write out 0",
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


class Keeper:
    """A progress keeper that logs what it is told (`transactional`: as the transactions of
    exactly-once mode; `drops`: the failures it takes as a dropped round)."""

    def __init__(
        self,
        log: list[str],
        drop: Sequence[Outcome] = (),
        transactional: bool = False,
        drops: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.log, self.drop = log, list(drop)
        self.transactional = transactional
        self.drops = drops

    def admit(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        self.log.append(f"admit {len(outcomes)}")
        return [r for r in outcomes if r not in self.drop]

    def begin(self) -> None:
        self.log.append("begin")

    def delivered(self, outcomes: Sequence[Outcome]) -> None:
        self.log.append(f"delivered {len(outcomes)}")

    def failed(self, exc: BaseException) -> bool:
        self.log.append(f"failed {type(exc).__name__}")
        return isinstance(exc, self.drops)

    def tick(self) -> None:
        self.log.append("tick")

    def finished(self, topic: str, partition: int) -> int | None:
        return None

    def moved_past(self, topic: str, partition: int, offset: int) -> None:
        self.log.append(f"moved past {offset}")

    def close(self) -> None:
        self.log.append("commit")

    def abandon(self) -> None:
        self.log.append("abandon")


class Failing(Recorder):
    """An output whose flush raises `error` once."""

    def __init__(self, name: str, log: list[str], error: BaseException) -> None:
        super().__init__(name, log)
        self.error: BaseException | None = error

    def flush(self) -> list[Outcome]:
        self.log.append(f"flush {self.name}")
        error, self.error = self.error, None
        if error is not None:
            raise error
        return []


def staged(history: Recorder, out: Recorder, dlq: Recorder) -> list[tuple[Output, Recorder]]:
    """The flow's outputs as exactly-once writes them: the Kafka ones in the transaction."""
    return [
        (Output("history", everything, lambda _: history), history),
        (Output("out", enriched, lambda _: out, transactional=True), out),
        (Output("dlq", failed, lambda _: dlq, transactional=True), dlq),
    ]


def test_a_transactional_round_writes_history_durably_before_the_transaction_opens() -> None:
    """Exactly-once: the rows first (a Cassandra outage is waited out with no transaction
    open), then the transaction begins and takes the messages; re-routed outcomes go out
    again to every output; the round counts once all of it is acknowledged."""
    log: list[str] = []
    moved = dead(20, offset=9)
    history, out, dlq = Recorder("history", log), Recorder("out", log, [moved]), Recorder("dlq", log)
    delivery = Delivery(staged(history, out, dlq), progress=Keeper(log, transactional=True))
    delivery.write([ok(), dead(10)])
    assert log == [
        "admit 2",
        "write history 2",
        "flush history",
        "begin",
        "write out 1",
        "write dlq 1",
        "flush out",
        "flush dlq",
        "write history 1",
        "write out 0",
        "write dlq 1",
        "flush history",
        "flush out",
        "flush dlq",
        "delivered 2",
    ]
    assert history.items[-1] is moved and dlq.items[-1] is moved


def test_a_round_the_keeper_drops_is_not_an_error_and_counts_nothing() -> None:
    from flows.errors import DeliveryFailed, RoundAborted

    for error in (RoundAborted("waiting for cassandra"), DeliveryFailed("timed out", retriable=True)):
        log: list[str] = []
        history, dlq = Recorder("history", log), Recorder("dlq", log)
        out = Failing("out", log, error)
        delivery = Delivery(
            staged(history, out, dlq), progress=Keeper(log, transactional=True, drops=(DeliveryFailed,))
        )
        delivery.write([ok()])
        assert "delivered 1" not in log and not delivery.broken
        delivery.close()
        assert "commit" in log and "abandon" not in log


def test_after_a_failed_write_close_abandons_instead_of_committing() -> None:
    """A write that fails for a reason the keeper does not own (a bug, a server error):
    Bytewax closes the output step while it unwinds, and the open transaction must abort,
    never commit messages whose offsets were not sent."""
    log: list[str] = []
    history, dlq = Recorder("history", log), Recorder("dlq", log)
    out = Failing("out", log, RuntimeError("boom"))
    delivery = Delivery(staged(history, out, dlq), progress=Keeper(log, transactional=True))
    try:
        delivery.write([ok()])
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failure is raised")
    assert delivery.broken and "failed RuntimeError" in log
    log.clear()
    delivery.close()
    assert log == ["abandon", "close dlq", "close out", "close history"], "nothing drained, nothing committed"


def test_progress_counts_a_batch_only_after_every_output_flushed_it_rerouted_outcomes_included() -> None:
    """Exactly-once: a transaction may commit the offsets of a batch only once its history
    rows, messages and dead letters are all acknowledged."""
    log: list[str] = []
    good, bad, stale = ok(), dead(10), dead(30, offset=11)
    history, out, dlq = Recorder("history", log), Recorder("out", log, [dead(20, offset=9)]), Recorder("dlq", log)
    delivery = Delivery(
        three(history, out, dlq),
        progress=Keeper(log, drop=[stale]),
    )
    delivery.write([good, bad, stale])
    assert log[0] == "admit 3" and log[-1] == "delivered 2"
    assert [e for e in log if e.startswith("flush")] == ["flush history", "flush out", "flush dlq"] * 2
    assert stale not in history.items + dlq.items, "an outcome the keeper did not admit is written nowhere"
    delivery.close()
    assert log[-4:] == ["commit", "close dlq", "close out", "close history"], "the last commit before the outputs close"


def test_with_depth_one_a_batch_is_awaited_while_the_next_is_handed_over_and_counted_only_then() -> None:
    log: list[str] = []
    history, out, dlq = Recorder("history", log), Recorder("out", log), Recorder("dlq", log)
    delivery = Delivery(
        three(history, out, dlq),
        progress=Keeper(log),
        depth=1,
    )
    delivery.write([ok(), dead(10)])
    assert log == ["admit 2", "write history 2", "write out 1", "write dlq 1"], "handed over, not awaited"
    assert delivery.in_flight == 1
    log.clear()
    delivery.write([ok(), ok(), ok()])
    assert log == [
        "admit 3",
        "write history 3",
        "write out 3",
        "write dlq 0",
        "flush history",
        "flush out",
        "flush dlq",
        "delivered 2",
    ], "the second batch goes out before the first is awaited; the first is counted once flushed"
    log.clear()
    delivery.drain()
    assert log == ["flush history", "flush out", "flush dlq", "delivered 3"] and delivery.in_flight == 0
    log.clear()
    delivery.write([ok()])
    delivery.close()
    assert log[-8:-2] == ["flush history", "flush out", "flush dlq", "delivered 1", "commit", "close dlq"], (
        "close awaits the batch in flight before the last commit"
    )


def test_rerouted_outcomes_wait_for_the_rounds_in_flight_and_go_out_alone() -> None:
    log: list[str] = []
    moved = dead(20, offset=9)
    history, out, dlq = Recorder("history", log), Recorder("out", log, [moved]), Recorder("dlq", log)
    delivery = Delivery(
        three(history, out, dlq),
        progress=Keeper(log),
        depth=1,
    )
    delivery.write([ok()])
    delivery.write([ok(), ok()])  # the first round's flush re-routes: the second is flushed first
    assert log[-2:] == ["delivered 1", "delivered 2"], "both counted once the re-routed are durable"
    assert log[-14:-2] == [
        "flush history",
        "flush out",
        "flush dlq",
        "flush history",
        "flush out",
        "flush dlq",
        "write history 1",
        "write out 0",
        "write dlq 1",
        "flush history",
        "flush out",
        "flush dlq",
    ]
    assert delivery.in_flight == 0 and history.items[-1] is moved and dlq.items == [moved]


class Client:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def abandon(self) -> None:
        self.log.append("abandon client")

    def close(self) -> None:
        self.log.append("close client")


def test_the_lambda_renews_its_outputs_closing_the_old_clients_without_delivering() -> None:
    """After a failed batch the Lambda takes fresh outputs; the old ones' producer and CQL
    cluster are closed, dropping what they held (not left open, one pair per failure)."""
    from flows.runtime.awslambda.clients import Clients

    log: list[str] = []
    built: list[Delivery] = []

    def delivery(*_: object, **__: object) -> Delivery:
        outputs = [
            Output("out", everything, lambda sh: Recorder(sh.get("kafka", lambda: Client(log), Client.close), log))
        ]
        built.append(Delivery.build(outputs))
        return built[-1]

    app = type("App", (), {"delivery": staticmethod(delivery)})()
    clients = Clients(app, None, None, delivery())  # type: ignore[arg-type]
    clients.renew_delivery()
    assert clients.delivery is built[1]
    assert [e for e in log if e.endswith(" client")] == ["abandon client", "close client"], (
        "the old client dropped what it held, then closed"
    )
