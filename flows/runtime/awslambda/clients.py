"""The parts of one Lambda container: built on the first invocation (never at import, so a
cold start with a bad setting fails an invocation with a readable error rather than the
init phase), reused by every later invocation, closed when the process exits.

Lambda freezes a container between invocations and reuses it, so the lookups' pools and
caches, the CQL session and the Kafka producer live here, one of each per container (a
container runs one invocation at a time). They come from the composition root, as the
dataflow's do.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from flows.app import compose
from flows.app.compose import App
from flows.app.outputs import Delivery
from flows.app.preflight import lambda_checks
from flows.core.enrich import Enricher, close_lookups
from flows.core.sizes import TopicLimits
from flows.errors import SettingsError
from flows.settings import Settings
from flows.telemetry.logs import set_identity, setup_logging

log = logging.getLogger(__name__)

CLIENT_NAME = "enrichment-lambda"


@dataclass
class Clients:
    """A container's enrich step and outputs."""

    app: App
    limits: TopicLimits
    enricher: Enricher
    delivery: Delivery

    @property
    def settings(self) -> Settings:
        """The container's settings."""
        return self.app.settings

    @classmethod
    def build(cls, settings: Settings) -> Clients:
        """Check the outputs and the customers table exist and the topics are sized for
        MAX_VALUE_BYTES (a clear error now beats a refused write later), then open every
        client; on failure close what was opened."""
        if settings.exactly_once:
            raise SettingsError(
                "PROCESSING_GUARANTEE=exactly-once: the Lambda runs at-least-once only (its event source mapping "
                "commits the input offsets itself, outside any Kafka transaction of ours)"
            )
        limits = lambda_checks(settings)
        app = compose.build(settings, registry=None)  # the Lambda serves no /metrics
        enricher = app.enricher(limits, CLIENT_NAME)
        try:
            delivery = app.delivery(limits, CLIENT_NAME, progress=False)  # the mapping commits the offsets
        except BaseException:
            close_lookups(enricher)
            raise
        return cls(app, limits, enricher, delivery)

    def renew_delivery(self) -> None:
        """Fresh outputs after a failed write: the old producer may still hold messages of
        the failed batch, whose late acknowledgements must not count for the next batch.
        They are dropped (the old outputs closed without delivering: the producer purged,
        the CQL cluster shut down); Lambda retries the whole batch."""
        old = self.delivery
        old.broken = True
        _best_effort(old.close)
        self.delivery = self.app.delivery(self.limits, CLIENT_NAME, progress=False)

    def close(self) -> None:
        """Close every client, best effort."""
        for close in (self.delivery.close, lambda: close_lookups(self.enricher)):
            _best_effort(close)


def _best_effort(close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:  # noqa: BLE001 - closing is best effort (at exit, or after a failed start)
        log.exception("closing a client failed")


class ClientHolder:
    """Lazily built, process-wide `Clients`; `close` runs at exit (registered once)."""

    def __init__(
        self, build: Callable[[Settings], Clients] = Clients.build, settings: Callable[[], Settings] = Settings.from_env
    ) -> None:
        self._build = build
        self._settings = settings
        self._clients: Clients | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    @property
    def built(self) -> bool:
        """Whether this container has its clients."""
        return self._clients is not None

    def get(self) -> Clients:
        """The container's clients, built from the environment on the first call."""
        with self._lock:
            if self._clients is None:
                settings = self._settings()
                setup_logging(settings.log_level)
                set_identity(service="enrichment-lambda", function=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "local"))
                self._clients = self._build(settings)
                log.info("clients ready", extra={"fields": {"settings": settings.describe()}})
            return self._clients

    def close(self) -> None:
        """Close and forget the clients; the next `get` builds new ones from the environment."""
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is not None:
            clients.close()
