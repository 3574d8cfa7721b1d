"""Checks for config dataclasses: one error type whose message is always `field: why`.

A section's dataclass raises `ConfigError(field, why)`; the run config loader prefixes the section,
so a user reads `prompts.n_per_round: must be positive, got -3`.
"""
from __future__ import annotations

from collections.abc import Collection
from typing import Any


class ConfigError(ValueError):
    def __init__(self, field: str, why: str):
        self.field, self.why = field, why
        super().__init__(f"{field}: {why}")

    def within(self, section: str) -> ConfigError:
        """The same error, named from the run config's top (`section.field`)."""
        return ConfigError(f"{section}.{self.field}", self.why)


def require(ok: bool, field: str, why: str) -> None:
    if not ok:
        raise ConfigError(field, why)


def require_choice(value: Any, field: str, choices: Collection) -> None:
    require(value in choices, field, f"must be one of {tuple(choices)}, got {value!r}")
