"""Prometheus's `promtool`, from Debian's `prometheus` package (pinned below): the package is
downloaded with `apt-get download` (no root needed, nothing installed, no server started)
and its `promtool` kept in a cache outside the clone (`~/.cache/enrichment-tools`, or
`ENRICHMENT_TOOLS_DIR`); a few seconds the first time. The tests check and unit-test the
alert rules with it: `python -m tools.promtool test rules ...`. On a machine without
apt-get, put a promtool of Prometheus 2.42 or later on the PATH."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools import gobin

PACKAGE = "prometheus"
VERSION = "2.42.0+ds-5+deb12u1"  # Debian 12 (bookworm)


def ensure() -> Path:
    """The binary: the cached one, else taken from the Debian package, else one on the PATH."""
    path = gobin.binary("promtool", VERSION)
    if path.exists():
        return path
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        found = shutil.which("promtool")
        if found is None:
            raise RuntimeError(
                "promtool: no apt-get here to fetch Debian's prometheus package; put promtool on the PATH"
            )
        return Path(found)
    print(f"fetching promtool from Debian's {PACKAGE} {VERSION} into {path.parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="promtool-") as tmp:
        fetch = [["apt-get", "download", f"{PACKAGE}={VERSION}"]]
        res = subprocess.run(fetch[0], cwd=tmp, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:  # the package lists may be missing or stale: refresh them once
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
            res = subprocess.run(fetch[0], cwd=tmp, capture_output=True, text=True, timeout=300)
        debs = list(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if res.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download {PACKAGE}={VERSION} failed: {res.stderr[-2000:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True, timeout=300)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(tmp) / "x" / "usr" / "bin" / "promtool", path)
    return path


if __name__ == "__main__":
    sys.exit(subprocess.call([str(ensure()), *sys.argv[1:]]))
