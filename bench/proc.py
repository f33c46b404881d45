"""Run a variant as a subprocess and measure it from outside: CPU time, RSS and peak RSS
(VmHWM) sampled from /proc while it runs, and the kernel's CPU totals (wait4 rusage: user
+ system CPU of the process and its waited-for children) when it exits.

Its output goes to a log file; lines matching `drop` (the dataflow's per-record failure
warnings, thousands a second on a miss-heavy workload) are counted instead of kept.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    wall: float  # time.time()
    cpu_s: float  # user + system, the process and its reaped children
    rss_mb: float
    peak_mb: float = 0.0
    threads: int = 0


@dataclass
class Exit:
    returncode: int
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_mb: float

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s


def read_proc(pid: int) -> tuple[float, float, float, int] | None:
    """(CPU seconds, RSS MB, peak RSS MB, threads) of a live process from /proc, or None once
    it is gone. The peak is VmHWM: wait4's ru_maxrss can't be used, as Linux carries the parent's
    RSS at spawn time into the child's across exec."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may contain spaces
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    rss_kb = hwm_kb = threads = 0
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            rss_kb = int(line.split()[1])
        elif line.startswith(b"VmHWM:"):
            hwm_kb = int(line.split()[1])
        elif line.startswith(b"Threads:"):
            threads = int(line.split()[1])
    return (utime + stime + cutime + cstime) / CLK_TCK, rss_kb / 1024, hwm_kb / 1024, threads


@dataclass
class Monitored:
    """One subprocess, sampled every `interval` seconds from a thread."""

    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    interval: float = 0.25
    drop: bytes | None = None
    samples: list[Sample] = field(default_factory=list)
    dropped_lines: int = 0
    exit: Exit | None = None

    def start(self) -> Monitored:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by the reader thread
        self.started = time.time()
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        with self._log:
            for line in stream:
                if self.drop is not None and self.drop in line:
                    self.dropped_lines += 1
                    continue
                self._log.write(line)

    def _sample(self) -> None:
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self._finish(status, usage)
                return
            now = read_proc(self.proc.pid)
            if now is not None:
                self.samples.append(Sample(time.time(), *now))
            time.sleep(self.interval)

    def _finish(self, status: int, usage: resource.struct_rusage) -> None:
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code  # reaped here, so Popen must not wait again
        peak = max((x.peak_mb for x in self.samples), default=0.0)
        self.exit = Exit(code, time.monotonic() - self._t0, usage.ru_utime, usage.ru_stime, peak)
        # the last cumulative CPU figure, so CPU between samples ends exactly at the total
        self.samples.append(Sample(time.time(), self.exit.cpu_s, self.samples[-1].rss_mb if self.samples else 0))
        self._done.set()

    def wait(self, timeout: float | None = None) -> Exit:
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.cmd[:4]} still running after {timeout}s")
        self._reader.join(5)
        assert self.exit is not None
        return self.exit

    def signal(self, sig: int = signal.SIGINT) -> None:
        if self.running:
            os.kill(self.proc.pid, sig)

    def stop(self, grace_s: float = 30.0) -> tuple[Exit, str]:
        """SIGINT, then SIGTERM, then SIGKILL, each after `grace_s`: (exit, what stopped it)."""
        for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL")):
            self.signal(sig)
            try:
                return self.wait(grace_s), name
            except TimeoutError:
                continue
        return self.wait(grace_s), "SIGKILL"

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
