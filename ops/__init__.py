"""Operator tools for the enrichment pipeline: `python -m ops replay|trace|reconcile|migrate`.

On-call work that the dataflow itself does not do: re-feed dead letters once their cause is
fixed, follow one record from input to history row to output, and check that every input
record came out somewhere. They read the same settings (environment variables) as the
dataflow, so they point at the same Kafka topics and history table.
"""
