#!/usr/bin/env bash
# Prints a Python 3.11 or 3.12 interpreter to build .venv with, or explains why there is none.
# bytewax 0.21.1 ships wheels for CPython 3.8-3.12 only; 3.13 cannot install it.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)' 2>/dev/null; }
for c in ${PYTHON:-} python3.12 python3.11 python3; do
  if command -v "$c" >/dev/null 2>&1 && ok "$c"; then command -v "$c"; exit 0; fi
done
found=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none)
echo "error: need Python 3.11 or 3.12 (found python3 = $found). bytewax 0.21.1 has no wheels for 3.13;" >&2
echo "       install python3.12 or python3.11, or point PYTHON=/path/to/python3.12 at one." >&2
exit 1
