"""`python -m ops`: see `ops.cli` and `python -m ops --help`."""

import sys

from ops.cli import main

sys.exit(main())
