"""The project's errors: one base, then what the operator must fix (configuration) and
what may pass by itself (a dependency). Entry points map them to exit statuses."""

from __future__ import annotations


class EnrichmentError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigurationError(EnrichmentError):
    """A setting, a topic, a table or a permission is wrong: fix it and start again (exit 2)."""


class SettingsError(ConfigurationError, ValueError):
    """A setting is missing or malformed; the message names the variable."""


class PreflightError(ConfigurationError):
    """A start-up check failed: a dependency unreachable, a topic or table missing or misfit."""


class DependencyError(EnrichmentError):
    """A dependency failed while records were being processed."""


class DependencyUnavailable(DependencyError):
    """A dependency stayed unavailable past the retry deadline (exit 3)."""


class DeliveryFailed(DependencyError):
    """Kafka did not acknowledge a message; `code` is the Kafka error code, if there was one."""

    def __init__(self, message: str, code: int | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable  # Kafka may take it later (a timeout, a broker away)


class RecordsRefused(DeliveryFailed):
    """Exactly-once: a topic refused messages inside the open transaction, which can then only
    abort; the writer remembers them, so that when their records are read again the outputs
    deliver them another way (as at-least-once does: a dead letter, or a smaller one).
    `sizes`: some were refused for size (the topics' limits must be read again)."""

    sizes = False


class RoundAborted(EnrichmentError):
    """Exactly-once: the round being delivered was dropped with its aborted transaction;
    its records are read again from the committed offsets. Not a failure of the flow."""
