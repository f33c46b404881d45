"""The fault matrix: the flow in every shape users run it, under the faults they will meet,
with both guarantees where the shape allows them, checked from the outside.

A cell is (shape, fault, guarantee). Its run: fresh topics, customers and group; the shape's
processes started the way their orchestrator starts them (and restarted the way it restarts
them); records fed at a steady rate (a batch run gets its input first); the fault injected
mid-stream; then, once the feed is done, the run is settled (the group's lag 0 and SIGTERM,
or the batch run's exit 0) and accounted for as a user would: every input record, as a
`read_committed` consumer reads the input, in exactly one of the outputs (exactly-once, read
`read_committed`) or at least one (at-least-once, duplicates bounded by the snapshot
interval), its history row, the group's lag 0, the exit statuses.

Shapes:
- `one-process`: `python -m bytewax.run dataflow -w 2 -r DIR -s 1 -b 0`, restarted when it exits;
- `statefulset`: two processes with the pod environment of `k8s/base/statefulset.yaml` and the
  settings ConfigMap (`k8s/settings/settings.env`): BYTEWAX_POD_NAME, a hostfile, a recovery
  volume each (BYTEWAX_RECOVERY_DIRECTORY), the image's command; each restarted when it exits;
- `deployment` (exactly-once only): two independent processes with the environment of
  `k8s/exactly-once/deployment.yaml`, each its own pod name (HOSTNAME);
- `batch`: `STOP_AT_END=true`, one process `-w 2` with recovery, restarted on failure until it
  exits 0 (a Kubernetes Job); its input is produced before it starts;
- `lambda` (at-least-once only): the handler behind an event source mapping
  (`tests/integration/esm.py`), restarted when it exits.

Faults: `sigkill` (SIGKILL three times), `sigstop` (a process frozen past the group's session
timeout, then thawed), `cassandra` (stopped for an outage longer than the transaction
timeout), `postgres` (restarted), `kafka` (the broker restarted), `output-error` (an output
step raises once), `txn-input` (the input written by a transactional producer, with aborted
transactions), `partitions` (partitions added to the input mid-stream), `refusing` (the
output topic's max.message.bytes lowered so it refuses some enriched messages, and the
failure topic made compacted while records without a key fail).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cassandra.cluster import Session
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions

from flows import connections
from tools import sample
from tools.kafkautil import produce_all, read_topic

from .flowrun import ROOT
from .resilience import Accounting, Scenario, SteadyProducer, stack
from .test_scale import free_base_port

SHAPES = ("one-process", "statefulset", "deployment", "batch", "lambda")
FAULTS = ("sigkill", "sigstop", "cassandra", "postgres", "kafka", "output-error", "txn-input", "partitions", "refusing")
GUARANTEES = ("at-least-once", "exactly-once")

RATE = 500.0  # records/s fed to the long-running shapes
FEED_S = 24.0  # how long the feed lasts
BATCH_RECORDS = 30000
BATCH_SLOW_US = 1000  # a batch's pace per record until its fault is in (then full speed)
SESSION_TIMEOUT_MS = 6000
TRANSACTION_TIMEOUT_MS = 15000  # the outage below outlasts it: no transaction may stay open across it
# Cassandra stopped this long: past the transaction timeout above (and the default 30 s);
# `make test`'s fast slice stops it for 25 s (MATRIX_CASSANDRA_OUTAGE_S), the same proof
CASSANDRA_OUTAGE_S = float(os.environ.get("MATRIX_CASSANDRA_OUTAGE_S", "60"))
RESTART_DELAY_S = 1.0  # the orchestrator restarts an exited process after this (kubelet backs off from 10 s)
MATRIX_REPORT = os.environ.get("MATRIX_REPORT")


@dataclass(frozen=True)
class Cell:
    shape: str
    fault: str
    guarantee: str

    def __str__(self) -> str:
        return f"{self.shape}-{self.fault}-{self.guarantee}"

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"


def allowed(shape: str, fault: str, guarantee: str) -> bool:
    """The cells the shapes allow: the Deployment is exactly-once's shape, the Lambda is
    at-least-once only and has no process to freeze."""
    if shape == "deployment":
        return guarantee == "exactly-once"
    if shape == "lambda":
        return guarantee == "at-least-once" and fault != "sigstop"
    return True


CELLS = [Cell(s, f, g) for s in SHAPES for f in FAULTS for g in GUARANTEES if allowed(s, f, g)]


# ------------------------------------------------------------------------ processes


class Pod:
    """One process as its orchestrator runs it: started with `cmd` and `env`, restarted when
    it exits (`restart`: "always", or "on-failure" for a Job), each exit status recorded."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path, restart: str = "always") -> None:
        self.name, self.cmd, self.env, self.log, self.restart = name, cmd, env, log, restart
        self.exits: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.finished = threading.Event()  # the Job's run exited 0
        self._thread = threading.Thread(target=self._supervise, name=f"pod-{name}", daemon=True)

    def start(self) -> Pod:
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock, open(self.log, "ab") as out:
                if self._stopping.is_set():
                    return
                out.write(f"--- {self.name} starts\n".encode())
                self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=out)
            rc = self.proc.wait()
            self.exits.append(rc)
            if self.restart == "on-failure" and rc == 0:
                self.finished.set()
                return
            if self._stopping.wait(RESTART_DELAY_S):
                return

    def signal(self, sig: int) -> bool:
        """Send `sig` to the running process; False when none runs now."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
            proc.send_signal(sig)
            return True

    def handles_sigterm(self) -> bool:
        """The running process has its SIGTERM handler (installed when the dataflow module
        loads: before, `bytewax.run` is still importing and SIGTERM ends it by the signal)."""
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            return False
        caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    def stop(self) -> None:
        """Stop restarting and SIGTERM the process (a thawed one, if it was frozen), once:
        Kubernetes sends one SIGTERM, then SIGKILL after the grace period."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)

    def terminate(self, timeout: float = 90) -> int | None:
        """`stop`, then wait for the exit (SIGKILL after `timeout`, as Kubernetes does after
        the grace period); its exit status."""
        self.stop()
        with self._lock:
            proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._thread.join(15)
        return self.exits[-1] if self.exits else proc.returncode


def manifest_env(path: str, container: str = "dataflow") -> dict[str, str]:
    """The plain `value` env entries of a manifest's container."""
    doc = yaml.safe_load((ROOT / path).read_text())
    containers = doc["spec"]["template"]["spec"]["containers"]
    found = next(c for c in containers if c["name"] == container)
    return {e["name"]: str(e["value"]) for e in found.get("env", []) if "value" in e}


def configmap_env(kustomization: str | None = None) -> dict[str, str]:
    """The settings ConfigMap: `k8s/settings/settings.env`, merged with an overlay's literals."""
    env: dict[str, str] = {}
    for line in (ROOT / "k8s/settings/settings.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            env[name] = value
    if kustomization:
        doc = yaml.safe_load((ROOT / kustomization).read_text())
        for gen in doc.get("configMapGenerator", []):
            for literal in gen.get("literals", []):
                name, value = literal.split("=", 1)
                env[name] = value
    return env


# servers, topics and names: what the local stack and the cell put in place of the manifests'
LOCAL = ("KAFKA_BOOTSTRAP_SERVERS", "PG_DSN", "SCYLLA_HOSTS", "SCYLLA_PORT")


class Run:
    """One cell being run: its scenario, its processes and what the fault did."""

    def __init__(self, cell: Cell, tmp: Path) -> None:
        self.cell = cell
        self.tmp = tmp
        self.rng = random.Random(str(cell))
        extra = {
            "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "TRANSACTION_TIMEOUT_MS": str(TRANSACTION_TIMEOUT_MS),
            "RETRY_DEADLINE_SECONDS": "180",
            "KAFKA_CLIENT_TOPIC_METADATA_REFRESH_INTERVAL_MS": "3000",
            "MAX_VALUE_BYTES": "65536",
        }
        self.sc = Scenario(tmp, partitions=4, exactly_once=cell.exactly_once, **extra)
        self.pods: list[Pod] = []
        self.snapshot_s = 1.0
        self.expected: Counter[str] = Counter()
        self.records: list[sample.SampleRecord] = []
        self.notes: list[str] = []
        self.hooks: dict[str, str] = {}
        self.mid_stream = True

    # ---------------------------------------------------------------- the shapes

    def base_env(self) -> dict[str, str]:
        env = {**os.environ, **self.sc.topics.env, **self.hooks}
        env["PROCESSING_GUARANTEE"] = self.cell.guarantee
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.hooks.get("PYTHONPATH"), str(ROOT)) if p)
        return env

    def pod_env(self, configmap: dict[str, str], manifest: dict[str, str]) -> dict[str, str]:
        """The pod's environment: the ConfigMap, then the container's env, with the local
        servers, this cell's topics and group in place of the manifests' placeholders."""
        base = self.base_env()
        env = {k: v for k, v in base.items() if k not in configmap or k in LOCAL}
        env.update({k: v for k, v in configmap.items() if k not in LOCAL})
        env.update(manifest)
        env.update(self.sc.topics.env)  # the cell's topics, group and timeouts
        env["PROCESSING_GUARANTEE"] = self.cell.guarantee
        env["STOP_AT_END"] = "false"
        env["BYTEWAX_DATAFLOW_API_CACHE_PATH"] = str(self.tmp)
        return env

    def start(self) -> None:
        shape = self.cell.shape
        python = sys.executable
        if shape in ("one-process", "batch"):
            recovery = self.tmp / "recovery"
            cmd = [python, "-m", "bytewax.run", "dataflow", "-w", "2", "-r", str(recovery), "-s", "1", "-b", "0"]
            env = {**self.base_env(), "STOP_AT_END": "true" if shape == "batch" else "false"}
            restart = "on-failure" if shape == "batch" else "always"
            self.pods = [Pod(shape, cmd, env, self.sc.log, restart)]
        elif shape == "statefulset":
            manifest = manifest_env("k8s/base/statefulset.yaml")
            self.snapshot_s = float(manifest.get("BYTEWAX_SNAPSHOT_INTERVAL", "10"))
            replicas = int(manifest["BYTEWAX_REPLICAS"])
            base = free_base_port(replicas)
            hostfile = self.tmp / "hostfile.txt"
            hostfile.write_text("".join(f"127.0.0.1:{base + i}\n" for i in range(replicas)))
            api = free_base_port(replicas)
            for i in range(replicas):
                name = f"{manifest['BYTEWAX_STATEFULSET_NAME']}-{i}"
                env = self.pod_env(configmap_env(), manifest)
                env.update(
                    {
                        "BYTEWAX_POD_NAME": name,
                        "HOSTNAME": name,
                        "BYTEWAX_HOSTFILE_PATH": str(hostfile),
                        "BYTEWAX_RECOVERY_DIRECTORY": str(self.tmp / f"volume-{i}"),
                        "BYTEWAX_DATAFLOW_API_PORT": str(api + i),
                    }
                )
                self.pods.append(Pod(name, [python, "-m", "bytewax.run", "dataflow"], env, self.tmp / f"{name}.log"))
        elif shape == "deployment":
            manifest = manifest_env("k8s/exactly-once/deployment.yaml")
            configmap = configmap_env("k8s/exactly-once/kustomization.yaml")
            api = free_base_port(2)
            for i in range(2):
                name = f"enrichment-5d9f8-{'xk' if i else 'qz'}{i}"
                env = self.pod_env(configmap, manifest)
                env.update({"HOSTNAME": name, "BYTEWAX_DATAFLOW_API_PORT": str(api + i)})
                self.pods.append(Pod(name, [python, "-m", "bytewax.run", "dataflow"], env, self.tmp / f"{name}.log"))
        elif shape == "lambda":
            cmd = [python, "-m", "tests.integration.esm"]
            self.pods = [Pod("lambda", cmd, self.base_env(), self.sc.log)]
        else:
            raise ValueError(shape)
        for pod in self.pods:
            pod.start()

    @property
    def logs(self) -> str:
        paths = {pod.log for pod in self.pods} | {self.sc.log}
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(paths) if p.exists())

    # ---------------------------------------------------------------- the feed

    def make_records(self, n: int, seed: int) -> list[sample.SampleRecord]:
        recs = list(sample.events(n, 2000, bad_ratio=0.01, seed=seed, large=False))
        if self.cell.fault == "refusing":
            # records without a key that fail (their dead letters a compacted topic refuses), and
            # enriched messages of a few hundred bytes more than most (the output topic refuses them)
            rng = random.Random(seed)
            for i in range(len(recs)):
                if i % 50 == 7:
                    recs[i] = sample.SampleRecord(None, b"{not json %d" % i, [], "invalid_json")
                elif i % 50 == 23 and recs[i].expect == "enriched":
                    doc = json.loads(recs[i].value or b"{}")
                    doc["payload"] = {"note": "x" * (600 + rng.randrange(100))}
                    recs[i] = sample.SampleRecord(recs[i].key, json.dumps(doc).encode(), recs[i].headers, "big")
        return recs

    def feed(self) -> threading.Thread:
        """Produce the cell's records: before the start for a batch run (returns a finished
        thread), else at RATE in the background."""
        n = BATCH_RECORDS if self.cell.shape == "batch" else int(RATE * FEED_S)
        self.records = self.make_records(n, seed=len(str(self.cell)))
        if self.cell.fault == "txn-input":
            feeder: threading.Thread = TransactionalFeeder(self, self.records)
        elif self.cell.shape == "batch":
            produce_all(self.sc.settings, self.sc.topics.input, self.records)
            feeder = threading.Thread(target=lambda: None)
        else:
            feeder = SteadyProducer(self.sc, self.records, RATE)
        if self.cell.fault != "txn-input":
            self.expected.update(r.expect for r in self.records)
        feeder.start()
        if self.cell.shape == "batch":
            feeder.join()
        return feeder

    # ---------------------------------------------------------------- helpers for faults

    @property
    def batch_done(self) -> bool:
        return self.cell.shape == "batch" and self.pods[0].finished.is_set()

    def wait_for_outputs(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.sc.output_count() < n and not self.batch_done:
            assert time.monotonic() < deadline, f"fewer than {n} outputs after {timeout}s:\n{self.logs}"
            time.sleep(0.2)

    def alive(self) -> list[Pod]:
        return [p for p in self.pods if p.proc is not None and p.proc.poll() is None]

    def a_running_pod(self, timeout: float = 60) -> Pod:
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive()
            if alive:
                return self.rng.choice(alive)
            assert time.monotonic() < deadline, f"no process running:\n{self.logs}"
            time.sleep(0.2)

    def note(self, text: str) -> None:
        self.notes.append(text)


class TransactionalFeeder(threading.Thread):
    """An upstream producer writing in transactions of 1-200 records, one in five aborted;
    what the input holds for its readers is the committed ones (`run.expected`)."""

    def __init__(self, run: Run, records: list[sample.SampleRecord]) -> None:
        super().__init__(daemon=True)
        self.run_, self.records = run, records
        self.error: str | None = None
        self.committed = 0
        self.aborted = 0

    def run(self) -> None:
        run = self.run_
        producer = self._producer()
        rng = random.Random(3)
        pace = None if run.cell.shape == "batch" else RATE
        start, i = time.monotonic(), 0
        try:
            while i < len(self.records):
                size = rng.randint(1, 200)
                chunk = self.records[i : i + size]
                commit = rng.random() >= 0.2
                try:
                    producer.begin_transaction()
                    for rec in chunk:
                        producer.produce(run.sc.topics.input, rec.value, rec.key, headers=rec.headers)
                    if commit:
                        producer.commit_transaction(30)
                    else:
                        producer.abort_transaction(30)
                except KafkaException as exc:
                    if not exc.args[0].fatal():
                        raise
                    # a producer upstream failing too (seen under load: INVALID_TXN_STATE at
                    # the end of a transaction): its successor's init ends the transaction
                    # one way or the other; which one, the input itself says
                    producer = self._producer()
                    commit = self._committed_messages() == self.committed + len(chunk)
                if commit:
                    self.committed += len(chunk)
                    run.expected.update(r.expect for r in chunk)
                else:
                    self.aborted += len(chunk)
                i += size
                if pace is not None:
                    time.sleep(max(0.0, start + i / pace - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = f"{type(exc).__name__}: {exc}"

    def _producer(self) -> Producer:
        s = self.run_.sc.settings
        producer = Producer(
            {**connections.kafka_common(s), "transactional.id": f"upstream-{self.run_.sc.group}", "linger.ms": 5}
        )
        producer.init_transactions(30)
        return producer

    def _committed_messages(self) -> int:
        """Messages of committed transactions in the input (what a read_committed consumer reads)."""
        return sum(1 for _ in read_topic(self.run_.sc.settings, self.run_.sc.topics.input, committed_only=True))


# ------------------------------------------------------------------------ faults


def fault_sigkill(run: Run) -> None:
    for _ in range(3):
        before = run.sc.output_count()
        run.wait_for_outputs(before + 300)
        time.sleep(run.rng.uniform(0.5, 2.0))
        if run.batch_done:
            run.note("the batch ended before the next kill")
            return
        pod = run.a_running_pod()
        if pod.signal(signal.SIGKILL):
            run.note(f"SIGKILL {pod.name}")


def fault_sigstop(run: Run) -> None:
    run.wait_for_outputs(500)
    pod = run.a_running_pod()
    pod.signal(signal.SIGSTOP)
    frozen = SESSION_TIMEOUT_MS / 1000 * 1.5 + 2
    run.note(f"SIGSTOP {pod.name} for {frozen:.0f}s")
    time.sleep(frozen)
    pod.signal(signal.SIGCONT)


def fault_server(run: Run, server: str, outage_s: float) -> None:
    run.wait_for_outputs(500)
    stack("down", server)
    run.note(f"{server} down {outage_s:.0f}s")
    try:
        time.sleep(outage_s)
    finally:
        stack("up", server)


def fault_output_error(run: Run) -> None:
    """Installed before the start (the hook); here only waited for."""
    marker = Path(run.hooks["INJECT_OUTPUT_ERROR_MARKER"])
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, f"the output step was never made to fail:\n{run.logs}"
        time.sleep(0.2)
    run.note("an output step raised once")


def fault_partitions(run: Run) -> None:
    run.wait_for_outputs(500)
    admin = AdminClient(connections.kafka_common(run.sc.settings))
    for fut in admin.create_partitions([NewPartitions(run.sc.topics.input, 6)]).values():
        fut.result(30)
    run.note("input 4 -> 6 partitions")
    if run.cell.shape == "batch":  # the batch's input is in already: add records for the new partitions
        extra = run.make_records(3000, seed=99)
        producer = Producer(
            {**connections.kafka_common(run.sc.settings), "enable.idempotence": True, "batch.size": 16384}
        )  # batches within the topics' small max.message.bytes
        deadline = time.monotonic() + 60
        while len(producer.list_topics(run.sc.topics.input, timeout=10).topics[run.sc.topics.input].partitions) < 6:
            assert time.monotonic() < deadline, "the producer never saw the new partitions"
            time.sleep(0.2)
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        for i, rec in enumerate(extra):
            producer.produce(
                run.sc.topics.input, rec.value, rec.key, headers=rec.headers, partition=4 + i % 2, on_delivery=delivered
            )
        assert producer.flush(60) == 0 and not errors, errors[:3]
        run.expected.update(r.expect for r in extra)


def fault_refusing(run: Run) -> None:
    run.wait_for_outputs(500)
    admin = AdminClient(connections.kafka_common(run.sc.settings))
    changes = [
        ConfigResource(
            "topic",
            run.sc.topics.output,
            incremental_configs=[ConfigEntry("max.message.bytes", "1024", incremental_operation=AlterConfigOpType.SET)],
        ),
        ConfigResource(
            "topic",
            run.sc.topics.failure,
            incremental_configs=[ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)],
        ),
    ]
    for fut in admin.incremental_alter_configs(changes).values():
        fut.result(30)
    run.note("output topic max.message.bytes=1024, failure topic compacted")


def inject(run: Run) -> None:
    """Run the cell's fault (mid-stream)."""
    fault = run.cell.fault
    if fault == "sigkill":
        fault_sigkill(run)
    elif fault == "sigstop":
        fault_sigstop(run)
    elif fault == "cassandra":
        fault_server(run, "cassandra", CASSANDRA_OUTAGE_S)
    elif fault == "postgres":
        fault_server(run, "postgres", 3)
    elif fault == "kafka":
        fault_server(run, "kafka", 5)
    elif fault == "output-error":
        fault_output_error(run)
    elif fault == "partitions":
        fault_partitions(run)
    elif fault == "refusing":
        fault_refusing(run)
    elif fault == "txn-input":
        run.note("input in transactions, one in five aborted")


# ------------------------------------------------------------------------ a cell


@dataclass
class Result:
    cell: Cell
    acc: Accounting
    lag: int
    exits: dict[str, list[int]]
    seconds: float
    notes: list[str] = field(default_factory=list)
    crashes: int = 0
    mid_stream: bool = True  # a batch was still running when its fault was in

    def row(self) -> dict[str, Any]:
        a = self.acc
        return {
            "cell": str(self.cell),
            "inputs": a.inputs,
            "lost": a.lost,
            "duplicates": a.duplicates,
            "history_missing": a.history_missing,
            "history_stale": a.history_stale,
            "lag": self.lag,
            "exits": self.exits,
            "seconds": round(self.seconds),
            "fault": "; ".join(self.notes),
            "codes": dict(a.codes),
        }


def run_cell(cell: Cell, tmp: Path, cql: Session) -> Result:
    started = time.monotonic()
    run = Run(cell, tmp)
    if cell.fault == "output-error":
        run.hooks = {
            "PYTHONPATH": str(ROOT / "tests" / "integration" / "hooks"),
            "INJECT_OUTPUT_ERROR_AT": "5",
            "INJECT_OUTPUT_ERROR_MARKER": str(tmp / "injected"),
        }
    fault_in = tmp / "fault-in"
    if cell.shape == "batch":
        # held at a slow pace until the fault is in, so that it hits the batch mid-stream
        run.hooks = {
            **run.hooks,
            "PYTHONPATH": str(ROOT / "tests" / "integration" / "hooks"),
            "INJECT_SLOW_US_PER_RECORD": str(BATCH_SLOW_US),
            "INJECT_SLOW_UNTIL": str(fault_in),
        }
    feeder: threading.Thread | None = None
    try:
        if cell.shape == "batch":
            feeder = run.feed()
            run.start()
        else:
            run.start()
            feeder = run.feed()
        inject(run)
        run.mid_stream = not run.batch_done
        fault_in.touch()
        feeder.join(300)
        assert not feeder.is_alive(), "the feed did not finish"
        error = getattr(feeder, "error", None)
        assert error is None, error
        settle(run)
    finally:
        for pod in run.pods:  # all at once, as Kubernetes deletes the pods of a workload
            pod.stop()
        rcs = {pod.name: pod.terminate() for pod in run.pods}
        if cell.fault in ("cassandra", "postgres", "kafka"):
            for server in ("cassandra", "postgres", "kafka"):
                stack("up", server)
    acc = run.sc.account(cql)
    lag = steady(run.sc.lag)
    exits = {pod.name: pod.exits for pod in run.pods}
    crashes = sum(1 for pod in run.pods for rc in pod.exits[:-1] if rc != 0) + len(
        [n for n in run.notes if n.startswith("SIGKILL")]
    )
    result = Result(cell, acc, lag, exits, time.monotonic() - started, run.notes, crashes, run.mid_stream)
    result.acc.codes = acc.codes
    report(result)
    check(run, result, rcs)
    return result


def steady(ask: Callable[[], int], timeout: float = 90) -> int:
    """`ask()` again while the broker answers that may pass (a coordinator still loading
    after a broker restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask()
        except KafkaException as exc:
            if time.monotonic() > deadline or not (exc.args[0].retriable() or "coordinator" in str(exc).lower()):
                raise
            time.sleep(1)


def settle(run: Run) -> None:
    """Wait until everything fed is processed: the batch run's exit 0, or the group's lag 0."""
    if run.cell.shape == "batch":
        pod = run.pods[0]
        assert pod.finished.wait(420), f"the batch run did not end with status 0 (exits {pod.exits}):\n{run.logs}"
    run.sc.wait_for_lag_zero(timeout=300)
    if run.cell.shape != "batch":
        # the final stop is of running processes (one killed last may be waiting for its
        # restart, or still importing: its exit status would be the signal's, not the flow's)
        deadline = time.monotonic() + 60
        while not all(pod.handles_sigterm() for pod in run.pods):
            assert time.monotonic() < deadline, f"not every process restarted:\n{run.logs}"
            time.sleep(0.2)


def report(result: Result) -> None:
    row = result.row()
    print(f"[matrix] {json.dumps(row)}")
    if MATRIX_REPORT:
        with open(MATRIX_REPORT, "a") as out:
            out.write(json.dumps(row) + "\n")


def check(run: Run, result: Result, rcs: dict[str, int | None]) -> None:
    acc, cell = result.acc, result.cell
    where = f"{cell}: {acc.report(str(cell))} exits={result.exits}\n{run.logs}"
    assert result.mid_stream, f"the batch had ended before its fault was in: {where}"
    assert acc.inputs == sum(run.expected.values()), where
    assert acc.lost == 0 and acc.distinct == acc.inputs, where
    assert acc.history_missing == 0, where
    assert acc.history_stale == 0, f"history rows overwritten by a processing whose output is not there: {where}"
    assert result.lag == 0, where
    if cell.exactly_once:
        assert acc.duplicates == 0, where
    else:
        # at-least-once: what was processed since a crash's last snapshot, once per crash
        bound = (result.crashes + 1) * (RATE * (run.snapshot_s + 4) + 4000)
        assert acc.duplicates <= bound, f"{acc.duplicates} duplicates, over {bound:.0f}: {where}"
    # every final stop is a clean one: status 0 on SIGTERM (or the batch's own end)
    assert all(rc == 0 for rc in rcs.values()), f"final exit statuses {rcs}: {where}"
    assert not any(rc in (2, 3) for exits in result.exits.values() for rc in exits), where
    if cell.fault not in ("sigkill", "output-error"):
        # an outage, a pause, a producer upstream, new partitions, refusals: ridden out, no restart
        assert all(exits == [0] for exits in result.exits.values()), f"restarted: {where}"
    expected = {k: v for k, v in run.expected.items() if k not in ("enriched", "big")}
    if cell.fault == "refusing":
        big = run.expected.get("big", 0)
        refused = acc.codes.get("payload_too_large", 0)
        assert 0 < refused <= big, f"the output topic refused some of the {big} large messages: {where}"
        assert {k: v for k, v in acc.codes.items() if k != "payload_too_large"} == expected, where
    else:
        assert acc.codes == expected, where


def table(report: Path) -> str:
    """The report's cells as a Markdown table (docs/operations.md, the closing notes)."""
    rows = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    out = [
        "| shape | fault | guarantee | inputs | lost | duplicates | stale rows | lag | exit statuses | s |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        cell = next(c for c in CELLS if str(c) == r["cell"])
        exits = "; ".join(f"{name}: {' '.join(str(x) for x in codes)}" for name, codes in r["exits"].items())
        out.append(
            f"| {cell.shape} | {cell.fault} | {cell.guarantee} | {r['inputs']} | {r['lost']} | {r['duplicates']} "
            f"| {r.get('history_stale', 0)} | {r['lag']} | {exits} | {r['seconds']} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
