"""The AWS Lambda deployment: a handler for an Amazon MSK or self-managed Kafka event source
mapping, running each batch through the same decode/validate/enrich/route code as the
dataflow (`flows.pipeline.process`) and writing the same messages and history rows.

`event` is pure (the event in, the summary out); `clients` holds the per-container
connections; `handler` wires the two.
"""
