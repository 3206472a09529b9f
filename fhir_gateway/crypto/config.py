"""The `crypto` settings section (to be mounted on Settings as `crypto: CryptoSettings`).

`phi_paths` refines the default PHI element paths of fields.py: a resource type listed there gets
exactly the paths given (an empty list switches encryption off for that type); `"*"` applies to
every type. `string_search` decides what an unmodified string search (`family=smith`, R4: starts
with) does on an encrypted parameter: `refuse` (400, the default), or `whole-value`, which matches
the whole case- and accent-folded value instead (`name=smith` finds "Smith", not "Smithers").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class CryptoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Written in YAML as a mapping; held as sorted (type, paths) pairs so the settings stay hashable.
    phi_paths: tuple[tuple[str, tuple[str, ...]], ...] = ()
    string_search: Literal["refuse", "whole-value"] = "refuse"
    rotation_batch_size: int = Field(default=200, gt=0)

    @field_validator("phi_paths", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple(
                sorted((str(k), tuple(v) if isinstance(v, list | tuple) else v) for k, v in value.items())
            )
        return value
