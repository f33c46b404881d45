"""The tools' connection to ScyllaDB/Cassandra: the dataflow's own settings and cluster
options (`flows.adapters.scylla.session.connect`), with a database it can't connect to reported as one line and
exit status 2 before any work is done."""

from __future__ import annotations

from cassandra.cluster import Cluster, Session

from flows.adapters.scylla.session import connect, connect_failure
from flows.settings import Settings
from ops.errors import USAGE, OpsError


def open_session(settings: Settings) -> tuple[Cluster, Session]:
    """A connected session and its cluster (the caller shuts it down); OpsError (status 2), with
    the cluster shut down, when the database can't be reached."""
    cluster: Cluster = connect(settings, connect_timeout=settings.startup_timeout_seconds)
    try:
        return cluster, cluster.connect()
    except Exception as exc:
        cluster.shutdown()
        raise OpsError(connect_failure(settings, exc), USAGE) from None
