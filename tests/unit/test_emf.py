"""The Lambda's CloudWatch embedded-metric-format lines, parsed as CloudWatch does: every
metric a directive names is a number at the top level, every dimension a string there."""

from __future__ import annotations

import io
import json
from typing import Any

from flows.runtime.awslambda import emf

ENV = {"AWS_LAMBDA_FUNCTION_NAME": "enrichment", "AWS_EMF_NAMESPACE": "Pipelines"}


def parse(text: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in text.splitlines()]
    for doc in docs:
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert isinstance(doc["_aws"]["Timestamp"], int)
        for dims in directive["Dimensions"]:
            assert all(isinstance(doc[d], str) for d in dims)
        for metric in directive["Metrics"]:
            assert isinstance(doc[metric["Name"]], int | float)
            assert metric["Unit"] in ("Count", "Milliseconds")
    return docs


def test_a_batch_done() -> None:
    out = io.StringIO()
    summary = {
        "records": 10,
        "enriched": 7,
        "failed": 3,
        "failed_by_code": {"invalid_json": 2, "customer_not_found": 1},
    }
    emf.invocation(summary, 10, 0.25, {"postgresql": 2, "kafka": 0}, out=out, environ=ENV)
    main, *codes = parse(out.getvalue())
    assert main["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Pipelines"
    assert main["FunctionName"] == "enrichment"
    assert (main["Records"], main["Enriched"], main["Failed"], main["BatchFailed"]) == (10, 7, 3, 0)
    assert main["BatchDuration"] == 250.0 and main["Retries.postgresql"] == 2
    assert {(d["ErrorCode"], d["DeadLetters"]) for d in codes} == {("invalid_json", 2), ("customer_not_found", 1)}
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["FunctionName", "ErrorCode"]] for d in codes)


def test_a_batch_failed() -> None:
    out = io.StringIO()
    emf.invocation(None, 4, 1.5, {}, out=out, environ={})
    (doc,) = parse(out.getvalue())
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == emf.DEFAULT_NAMESPACE
    assert (doc["Records"], doc["BatchFailed"], doc["Enriched"]) == (4, 1, 0)
