"""Create what the pipeline reads and writes, for the demo, the tests and the benchmark:
topics sized by the size rule, the customers table and its rows. Production creates these
with its own tooling (the dataflow itself only creates the history schema)."""

from flows.adapters.kafka.topics import delete_topics, ensure_topics
from flows.adapters.postgres.table import CUSTOMERS_DDL, seed_customers

__all__ = ["CUSTOMERS_DDL", "delete_topics", "ensure_topics", "seed_customers"]
