"""Configs saved by an older segsplat_ns: fields added since are missing from their ``config.yml``.

nerfstudio restores a run's config with ``yaml.load``, which rebuilds dataclass objects from the attributes that
were saved and never runs ``__init__``: a field added to a config class after the run was trained is simply absent
(an ``AttributeError`` on first use). :func:`fill_missing_defaults` gives every such field its declared default,
recursively, so older runs load in ns-eval, ns-viewer and every segsplat command.
"""

from __future__ import annotations

import dataclasses
from typing import Any, List

__all__ = ["fill_missing_defaults"]


def fill_missing_defaults(config: Any) -> List[str]:
    """Set every missing dataclass field of ``config`` (and of the dataclasses it holds) to its default; returns
    the dotted names of the fields it filled."""
    filled: List[str] = []
    _fill(config, "", filled, set())
    return filled


def _fill(obj: Any, prefix: str, filled: List[str], seen: set) -> None:
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type) or id(obj) in seen:
        return
    seen.add(id(obj))
    for f in dataclasses.fields(obj):
        if f.name not in vars(obj):
            if f.default is not dataclasses.MISSING:
                setattr(obj, f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                setattr(obj, f.name, f.default_factory())  # type: ignore[misc]
            else:
                continue
            filled.append(prefix + f.name)
        _fill(getattr(obj, f.name), f"{prefix}{f.name}.", filled, seen)
