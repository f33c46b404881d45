"""`make run PROCESSES=N WORKERS=W`: a local Bytewax cluster of N processes x W workers.

Starts `python -m bytewax.run dataflow -w W -i I -a "127.0.0.1:P0;...;127.0.0.1:PN-1"` once
per process, with recovery on (`-r recovery/local`, a git-ignored folder all the processes
share: each creates its share of the partitions, see flows.runtime.bytewax.recovery). SIGINT and SIGTERM
are forwarded to every process, so they stop together (a second signal makes them exit at
once). When one process fails the others are stopped too: a Bytewax cluster can't go on
without one of its processes. Exits 0 when every process did, else with the first failure.

The children run in their own process group, so Ctrl-C in a terminal reaches them once,
through this launcher, not twice. With the dataflow API on (`BYTEWAX_DATAFLOW_API_ENABLED`),
process I serves it on `--api-port` + I.

With `--watch` (`make run`) the processes' logs go to `<recovery>/logs/process-<i>.log`
and the terminal shows a progress line every few seconds instead (tools/watch.py: records
in, enriched, failed by code, rate, the group's lag), plus every warning or error line the
processes log that is not about a single record.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]


def addresses(processes: int, base_port: int, host: str = "127.0.0.1") -> list[str]:
    return [f"{host}:{base_port + i}" for i in range(processes)]


def commands(
    processes: int,
    workers: int,
    base_port: int,
    recovery: Path | None,
    snapshot_s: int,
    backup_s: int,
    flow: str = "dataflow",
    separate: bool = False,
) -> list[list[str]]:
    """One `bytewax.run` command line per process; `separate`: a recovery directory per
    process (`<recovery>/process-<i>`), as a volume per pod in Kubernetes."""
    cmds = []
    for i in range(processes):
        cmd = [sys.executable, "-m", "bytewax.run", flow, "-w", str(workers)]
        if recovery is not None:
            directory = recovery / f"process-{i}" if separate else recovery
            cmd += ["-r", str(directory), "-s", str(snapshot_s), "-b", str(backup_s)]
        if processes > 1:
            cmd += ["-i", str(i), "-a", ";".join(addresses(processes, base_port))]
        cmds.append(cmd)
    return cmds


def child_env(base: Mapping[str, str], process_id: int, api_port: int, api_cache: str) -> dict[str, str]:
    env = dict(base)
    if "BYTEWAX_DATAFLOW_API_ENABLED" in env:  # bytewax turns the API on when the variable exists at all
        env["BYTEWAX_DATAFLOW_API_PORT"] = str(api_port + process_id)
        env.setdefault("BYTEWAX_DATAFLOW_API_CACHE_PATH", api_cache)  # where it writes dataflow.json
    return env


class Cluster:
    """The running processes; signals received are forwarded to all of them. `logs`: a
    directory for each process's output (else it shares this terminal)."""

    def __init__(
        self,
        cmds: Sequence[list[str]],
        env: Mapping[str, str],
        api_port: int,
        api_cache: str,
        logs: Path | None = None,
    ) -> None:
        self.logs: list[Path] = []
        self.procs = []
        for i, cmd in enumerate(cmds):
            out = None
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                self.logs.append(logs / f"process-{i}.log")
                out = open(self.logs[-1], "ab")  # noqa: SIM115 - lives as long as the process
            self.procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=child_env(env, i, api_port, api_cache),
                    start_new_session=True,
                    stdout=out,
                    stderr=out,
                )
            )

    def signal_all(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_all(signum)

    def wait(self, stop_timeout: float, every: Callable[[], None] | None = None) -> int:
        """Wait for all; on the first failure stop the rest (SIGTERM, then SIGKILL after
        `stop_timeout`). Returns 0 or the first non-zero status. `every` runs about every
        second meanwhile."""
        first_failure = 0
        stop_deadline: float | None = None
        ticked = time.monotonic()
        while any(p.poll() is None for p in self.procs):
            if every is not None and time.monotonic() - ticked >= 1:
                ticked = time.monotonic()
                every()
            for i, proc in enumerate(self.procs):
                rc = proc.poll()
                if rc not in (None, 0) and not first_failure:
                    first_failure = rc if rc > 0 else 128 - rc
                    print(f"run_local: process {i} exited with status {rc}; stopping the others", file=sys.stderr)
                    self.signal_all(signal.SIGTERM)
                    stop_deadline = time.monotonic() + stop_timeout
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self.signal_all(signal.SIGKILL)
            time.sleep(0.1)
        if not first_failure:
            codes = [p.returncode for p in self.procs]
            first_failure = next((c if c > 0 else 128 - c for c in codes if c != 0), 0)
        return first_failure


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.run_local", description=__doc__.split("\n")[0])
    parser.add_argument("-p", "--processes", type=int, default=1)
    parser.add_argument("-w", "--workers", type=int, default=1, help="workers per process")
    parser.add_argument("--base-port", type=int, default=2101, help="process i listens on base-port + i")
    parser.add_argument("--api-port", type=int, default=3030, help="dataflow API of process i on api-port + i")
    parser.add_argument(
        "-r",
        "--recovery-directory",
        type=Path,
        default=ROOT / "recovery" / "local",
        help="shared by the processes; 'none' turns recovery off",
    )
    parser.add_argument(
        "--separate-recovery",
        action="store_true",
        help="a recovery directory per process (<dir>/process-<i>), as a volume per pod",
    )
    parser.add_argument("-s", "--snapshot-interval", type=int, default=10)
    parser.add_argument("-b", "--backup-interval", type=int, default=0)
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=None,
        help="after a failure, seconds before the others are killed (default SHUTDOWN_TIMEOUT_SECONDS + 10)",
    )
    parser.add_argument("--flow", default="dataflow", help="import string of the flow")
    parser.add_argument(
        "--watch",
        action="store_true",
        help="logs to <recovery>/logs, and a progress line in the terminal every few seconds",
    )
    parser.add_argument("--every", type=float, default=5.0, help="with --watch: seconds between progress lines")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.workers < 1:
        parser.error("--processes and --workers must be at least 1")
    recovery = None if str(args.recovery_directory) == "none" else args.recovery_directory
    cmds = commands(
        args.processes,
        args.workers,
        args.base_port,
        recovery,
        args.snapshot_interval,
        args.backup_interval,
        args.flow,
        args.separate_recovery,
    )
    stop_timeout = args.stop_timeout
    if stop_timeout is None:
        stop_timeout = float(os.environ.get("SHUTDOWN_TIMEOUT_SECONDS") or 60) + 10
    print(
        f"run_local: {args.processes} process(es) x {args.workers} worker(s), recovery "
        f"{recovery or 'off'}; Ctrl-C stops them all",
        file=sys.stderr,
    )
    env = dict(os.environ)
    logs = None
    if args.watch:
        env["BYTEWAX_DATAFLOW_API_ENABLED"] = "true"
        logs = (recovery or ROOT / "recovery" / "local") / "logs"
        print(f"run_local: logs in {logs}; progress every {args.every:g}s", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="enrichment-api-") as api_cache:
        cluster = Cluster(cmds, env, args.api_port, api_cache, logs)
        signal.signal(signal.SIGINT, cluster.on_signal)
        signal.signal(signal.SIGTERM, cluster.on_signal)
        if not args.watch:
            return cluster.wait(stop_timeout)
        progress = Progress(cluster.logs, [args.api_port + i for i in range(args.processes)], args.every)
        try:
            return cluster.wait(stop_timeout, progress.tick)
        finally:
            progress.close()


class Progress:
    """What `--watch` prints: a progress line every `every` seconds, and the processes'
    log lines worth a person's eyes as they come (warnings and errors, not a record's)."""

    QUIET = ('"flows.failures"', '"flows.progress"')

    def __init__(self, logs: Sequence[Path], ports: Sequence[int], every: float) -> None:
        from flows.settings import Settings
        from tools.watch import Watch

        self._logs = list(logs)
        self._read = [0] * len(logs)
        self._watch = Watch(Settings.from_env(), ports)
        self._every = every
        self._last = 0.0

    def tick(self) -> None:
        for i, path in enumerate(self._logs):
            try:
                with open(path, "rb") as f:
                    f.seek(self._read[i])
                    chunk = f.read()
            except OSError:
                continue
            self._read[i] += len(chunk)
            for raw in chunk.decode(errors="replace").splitlines():
                if ('"level":"WARNING"' in raw or '"level":"ERROR"' in raw or "Traceback" in raw) and not any(
                    q in raw for q in self.QUIET
                ):
                    print(f"process {i}: {raw}", file=sys.stderr, flush=True)
        if time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            print(f"progress: {self._watch.tick()}", flush=True)

    def close(self) -> None:
        self._watch.close()


if __name__ == "__main__":
    sys.exit(main())
