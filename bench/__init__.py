"""The benchmark (`make bench`): the dataflow side by side with a raw Kafka passthrough
(the upper bound) and a naive per-record handler (the baseline), on one pre-loaded topic.

`bench.metrics` holds the pure parts (percentiles, steady-state window, report and table);
`bench.run` drives the stack; `bench.passthrough`, `bench.naive` and `bench.feeder` are the
subprocesses it measures or uses.
"""
