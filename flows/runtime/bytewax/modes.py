"""The input and the output step of each processing guarantee (docs/operations.md,
"What is guaranteed"):

- at-least-once: Bytewax assigns the input partitions and keeps, in its recovery
  snapshots, where each resumes: the first offset not yet delivered (a worker awaits a
  batch's acknowledgements while it builds the next); the finished offsets are also
  committed to CONSUMER_GROUP, for the tools that show lag.
- exactly-once: each worker is a member of CONSUMER_GROUP (Kafka assigns the partitions);
  messages go out in transactions with the offsets they cover, which are where a worker
  resumes: no recovery directory is needed.
"""

from __future__ import annotations

from bytewax.inputs import Source
from bytewax.outputs import Sink

from flows.adapters.kafka.group import GroupReader
from flows.app.compose import App
from flows.app.outputs import Delivery
from flows.core.model import Outcome, SourceRecord
from flows.runtime.bytewax.group import GroupInput, Workers
from flows.runtime.bytewax.lifecycle import Lifecycle
from flows.runtime.bytewax.preflight import Preflight
from flows.runtime.bytewax.sink import DeliverySink
from flows.runtime.bytewax.source import KafkaInput, WorkerOutputs


def input_and_output(
    app: App, preflight: Preflight, lifecycle: Lifecycle, identity: str, recovery: bool = False
) -> tuple[Source[SourceRecord], Sink[Outcome]]:
    """The source and the sink of the settings' guarantee. `identity` names this process
    (host and process id) in client ids and transactional ids, so that a restart of the same
    worker takes its predecessor's transactional.id over. `recovery`: Bytewax keeps
    snapshots (at-least-once: a partition without one resumes from the group's offset)."""
    s = app.settings
    m = app.metrics
    if not s.exactly_once:
        outputs = WorkerOutputs()
        source = KafkaInput(s, preflight.partitions, lifecycle.stopping, outputs, m, resume_from_group=recovery)
        return source, DeliverySink(
            lambda w: app.delivery(preflight.limits(), f"enrichment-deliver-{w}", depth=1 if s.overlap_acks else 0),
            on_build=outputs.register,
        )

    def client(worker: int) -> str:
        return f"enrichment-{identity}-w{worker}"

    workers = Workers(
        lambda w: GroupReader(s, client(w), lifecycle.stopping, m.add_input, m.set_high, m.forget_partitions)
    )

    def delivery(worker: int) -> Delivery:
        shared = workers.get(worker)
        shared.delivery = app.delivery(preflight.limits(), client(worker), reader=shared.reader)
        return shared.delivery

    sink = DeliverySink(delivery, after_close=lambda w: workers.get(w).reader.close())
    return GroupInput(workers, preflight.result), sink
