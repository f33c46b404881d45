"""The enrichment pipeline (README.md)."""

__version__ = "0.1.0"  # pyproject.toml has the same (tests/unit/test_metrics.py)
