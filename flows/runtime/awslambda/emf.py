"""The Lambda's metrics as CloudWatch embedded metric format (EMF) lines: one JSON object
per invocation on stdout, which CloudWatch Logs turns into metrics without an agent or an
API call (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html).

Namespace `AWS_EMF_NAMESPACE` (default `EnrichmentPipeline`), dimension `FunctionName`;
dead letters also by `ErrorCode`. docs/lambda.md lists the metrics.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

DEFAULT_NAMESPACE = "EnrichmentPipeline"
COUNTS = ("Records", "Enriched", "Failed", "BatchFailed")


def _document(namespace: str, dimensions: dict[str, str], metrics: Mapping[str, tuple[float, str]]) -> dict[str, Any]:
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
                }
            ],
        },
        **dimensions,
        **{name: value for name, (value, _) in metrics.items()},
    }


def invocation(
    summary: Mapping[str, Any] | None,
    records: int,
    seconds: float,
    retries: Mapping[str, int],
    out: TextIO | None = None,
    environ: Mapping[str, str] = os.environ,
) -> list[dict[str, Any]]:
    """Write (and return) the EMF documents of one invocation: `summary` is the handler's
    return value, None when the batch failed (Lambda retries it)."""
    namespace = environ.get("AWS_EMF_NAMESPACE") or DEFAULT_NAMESPACE
    function = {"FunctionName": environ.get("AWS_LAMBDA_FUNCTION_NAME", "local")}
    metrics: dict[str, tuple[float, str]] = {
        "Records": (records, "Count"),
        "Enriched": (summary["enriched"] if summary else 0, "Count"),
        "Failed": (summary["failed"] if summary else 0, "Count"),
        "BatchFailed": (0 if summary else 1, "Count"),
        "BatchDuration": (round(seconds * 1000, 3), "Milliseconds"),
    }
    for dependency, n in sorted(retries.items()):
        metrics[f"Retries.{dependency}"] = (n, "Count")
    docs = [_document(namespace, function, metrics)]
    for code, n in sorted((summary or {}).get("failed_by_code", {}).items()):
        docs.append(_document(namespace, {**function, "ErrorCode": code}, {"DeadLetters": (n, "Count")}))
    stream = out or sys.stdout
    for doc in docs:
        stream.write(json.dumps(doc, separators=(",", ":")) + "\n")
    stream.flush()
    return docs
