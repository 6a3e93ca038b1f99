"""A small inference cache for what a model derives from its parameters (pure Python and torch).

A click or a render at inference reuses values computed from the per-Gaussian parameters (smoothed features,
packed codes, level labels, ...) until those parameters change. The owner describes "the parameters as they are
now" by a hashable *state* tuple, e.g. ``(param._version, param.data_ptr(), N)``: in-place updates bump
``_version``, a resize or reload changes the pointer or N. Every value is dropped as soon as a call brings a
different state.
"""

from __future__ import annotations

from typing import Callable, Dict, Hashable, Optional, TypeVar

import torch

__all__ = ["InferenceMemo"]

T = TypeVar("T")


class InferenceMemo:
    """Values computed under ``torch.no_grad`` and kept while the owner's state tuple stays the same."""

    def __init__(self) -> None:
        self._state: Optional[Hashable] = None
        self._values: Dict[Hashable, object] = {}

    def get(self, state: Hashable, key: Hashable, compute: Callable[[], T]) -> T:
        """The value of ``key`` at ``state``: computed once (without gradients) per state."""
        if self._state != state:
            self._state = state
            self._values = {}
        if key not in self._values:
            with torch.no_grad():
                value = compute()
            if self._state == state:  # ``compute`` may have cleared the memo: then keep nothing from this state
                self._values[key] = value
            return value
        return self._values[key]  # type: ignore[return-value]

    def clear(self) -> None:
        """Forget every value (the next call recomputes whatever its state)."""
        self._state = None
        self._values = {}

    def __len__(self) -> int:
        return len(self._values)
