"""The registered segsplat methods, read from the ``nerfstudio.method_configs`` entry points.

Tools that run "every method" (``segsplat bench``, ``bench-latency``, the demo, the contract test) enumerate this,
so a new method is picked up from its entry point alone: no table of method names anywhere in shared code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Dict, List, Type

from segsplat_ns.contract import MethodContract
from segsplat_ns.errors import SegsplatError

if TYPE_CHECKING:
    from nerfstudio.plugins.types import MethodSpecification

ENTRY_POINT_GROUP = "nerfstudio.method_configs"


@dataclass(frozen=True)
class RegisteredMethod:
    """One ``ns-train`` method whose model implements the segsplat contract."""

    name: str
    """The ns-train name (the entry point's name)."""
    specification: "MethodSpecification"
    model_class: Type[MethodContract]

    @property
    def description(self) -> str:
        return self.specification.description

    def cpu_training_args(self, tiny: bool = False) -> List[str]:
        return list(self.model_class.cpu_training_args(tiny=tiny))


@lru_cache(maxsize=1)
def registered_methods() -> Dict[str, RegisteredMethod]:
    """Every installed method whose model subclasses :class:`MethodContract`, by ns-train name, sorted by name."""
    from importlib.metadata import entry_points

    methods: Dict[str, RegisteredMethod] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            specification = entry.load()
            model_class = specification.config.pipeline.model._target
        except Exception:  # noqa: BLE001 - another plugin's broken entry point is not ours to report
            continue
        if isinstance(model_class, type) and issubclass(model_class, MethodContract):
            methods[entry.name] = RegisteredMethod(entry.name, specification, model_class)
    return dict(sorted(methods.items()))


def method_names() -> List[str]:
    return list(registered_methods())


def text_methods() -> List[str]:
    """The registered methods that answer text prompts (``text_support`` declared)."""
    return [name for name, method in registered_methods().items() if method.model_class.text_support]


def get_method(name: str) -> RegisteredMethod:
    methods = registered_methods()
    if name not in methods:
        raise SegsplatError(
            f"unknown method '{name}': the registered segsplat methods are {', '.join(methods) or 'none'} "
            "(is segsplat_ns installed in this environment? pip install -e .)"
        )
    return methods[name]
