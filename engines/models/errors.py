"""Errors raised when a network is asked for with bad arguments."""

from __future__ import annotations

from engines.errors import SegstreamError


class ModelError(SegstreamError, ValueError):
    """A model was asked for with bad arguments (unknown name, bad class/channel count, bad option)."""


class UnknownModelError(ModelError):
    """No network is registered under the requested name."""


def check_positive(arch: str, **values: float) -> None:
    """Raise ModelError naming the first option that is not > 0."""
    for key, value in values.items():
        if not value > 0:
            raise ModelError(f"{arch}: {key} must be > 0, got {value}")
