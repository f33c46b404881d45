"""flows.memory: glibc's mmap threshold pinned, so the churning customer cache does not
make RSS climb (run in subprocesses: malloc settings are per process)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.runtime.memory import pin_mmap_threshold

ROOT = Path(__file__).resolve().parents[2]

CHURN = """
import json, random, sys
from flows.core.cache import TtlCache
from flows.runtime.memory import pin_mmap_threshold
applied = pin_mmap_threshold() if sys.argv[1] == "pin" else False
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
cache = TtlCache(300, 30, 100_000, 100_000)
rnd = random.Random(1)
rss = []
for step in range(40):
    for _ in range(50_000):
        cid = f"cust-{rnd.randrange(1_000_000):07d}"
        if not cache.lookup(cid)[0]:
            cache.put(cid, bytes(40) if rnd.random() < 0.5 else None)
    rss.append(rss_mb())
print(json.dumps({"applied": applied, "rss": rss}))
"""


def churn(mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_an_explicit_environment_setting_wins() -> None:
    assert pin_mmap_threshold({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_cache_churn_keeps_rss_flat_once_the_cache_is_full() -> None:
    result = churn("pin")
    assert result["applied"] is True
    rss = result["rss"]
    assert isinstance(rss, list)
    # 500,000 lookups: both LRUs at their 100,000 entries since ~250,000, and their dicts'
    # tables grown to the size they keep under churn
    full = rss[10]
    print(f"RSS with the cache full {full:.1f} MB, peak after {max(rss[10:]):.1f} MB, end {rss[-1]:.1f} MB")
    assert max(rss[10:]) - full < 3.0, rss
