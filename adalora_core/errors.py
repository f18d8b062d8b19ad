"""Errors shared by every part of adalora_core."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid hyper-parameter or target, named by its dotted field (the API answers 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str]]:
        # Celery pickles exceptions across processes; keep both fields through the round trip.
        return (type(self), (self.field, self.message))
