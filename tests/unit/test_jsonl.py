"""flows.adapters.archive.jsonl: every outcome a line, through the flow's outputs."""

import base64
import json
from pathlib import Path

from flows.app import compose
from flows.settings import Settings

from .test_kafka_outputs import dead, ok


def test_the_archive_output_writes_a_line_per_outcome(tmp_path: Path) -> None:
    settings = Settings.from_env({"ARCHIVE_DIR": str(tmp_path)})
    app = compose.build(settings, registry=None)
    [archive] = [o for o in app.outputs(None, "w0") if o.name == "archive"]
    writer = archive.writer(None)  # type: ignore[arg-type]
    writer.write([ok(), dead(5)])
    assert writer.flush() == []
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "w0.jsonl").read_text().splitlines()]
    assert [(x["status"], x["code"], x["topic"]) for x in lines] == [("enriched", None, "out"),
                                                                      ("failed", "invalid_json", "dlq")]
    assert base64.b64decode(lines[1]["value"]) == b"xxxxx"
