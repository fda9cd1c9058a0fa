"""Named plug-ins of one kind, all behind one ``Registry`` type: pruning methods, token selectors,
rewrite rules, backends, architectures and CLI commands.

Built-in plug-ins are the modules of one package (modules whose name starts with ``_`` are
helpers). A registry is filled in one of two ways:

- **self-registering** (no ``attribute``): importing a module registers what it defines, through
  ``REGISTRY.register``; listing imports every module.
- **one module per plug-in** (``attribute`` given): a module named as its plug-in holds it in
  ``attribute``; listing imports nothing, and a module is imported only when its plug-in is asked
  for, so ``--help`` stays fast.

Third-party plug-ins come from installed packages through Python entry points in the registry's
``group`` (``name = "package.module:OBJECT"``); they are registered under the entry point's name.

A class given to ``register`` (or named by an entry point) is registered as its one instance
when ``instances`` is set: selectors and rules are stateless objects with methods.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from vitdeploy.errors import VitDeployError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, package: str | None = None, attribute: str | None = None,
                 instances: bool = False):
        self.kind = kind
        """What a plug-in is, in messages: "pruning method", "backend", ..."""
        self.group = group
        """The entry-point group third-party packages register under."""
        self._package = package
        self._attribute = attribute
        self._instances = instances
        self._items: dict[str, T] = {}
        self._given: dict[str, Any] = {}
        """What was registered under each name (a class, where ``_items`` holds its instance)."""
        self._scanned = False

    def register(self, item: Any = None, *, name: str | None = None) -> Any:
        """Register ``item`` under ``name`` (default: its ``name`` attribute, or a function's name).

        Returns ``item``, so it works as a decorator. Registering the same object twice is a no-op;
        another object under a taken name is an error.
        """
        if item is None:
            return lambda target: self.register(target, name=name)
        key = name or getattr(item, "name", None) or item.__name__
        if key in self._given:
            if self._given[key] is not item:
                raise ValueError(f"two {self.kind}s are named {key!r}")
            return item
        self._given[key] = item
        self._items[key] = item() if self._instances and isinstance(item, type) else item
        return item

    def names(self, pattern: str = "*") -> list[str]:
        """Every plug-in's name matching the shell-style ``pattern``, sorted."""
        self._scan()
        return sorted(fnmatch.filter(set(self._items) | set(self._lazy()), pattern))

    def get(self, name: str) -> T:
        """The plug-in called ``name``; a ``VitDeployError`` naming the choices if there is none."""
        self._scan()
        if name not in self._items:
            self._load_lazy(name)
        return self._items[name]

    def items(self) -> dict[str, T]:
        """Every plug-in by name, in name order (importing each)."""
        return {name: self.get(name) for name in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def _scan(self) -> None:
        """Self-registering registries: import every built-in module and every entry point, once."""
        if self._scanned or self._attribute is not None:
            return
        self._scanned = True
        for module in self._package_modules():
            importlib.import_module(f"{self._package}.{module}")
        for point in self._entry_points().values():
            self._register_entry_point(point)

    def _lazy(self) -> list[str]:
        if self._attribute is None:
            return []
        return [*self._package_modules(), *self._entry_points()]

    def _load_lazy(self, name: str) -> None:
        points = self._entry_points()
        if self._attribute is not None and name in self._package_modules():
            module = importlib.import_module(f"{self._package}.{name}")
            self.register(getattr(module, self._attribute), name=name)
        elif self._attribute is not None and name in points:
            self._register_entry_point(points[name])
        else:
            raise VitDeployError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")

    def _package_modules(self) -> list[str]:
        if self._package is None:
            return []
        package = importlib.import_module(self._package)
        return [info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")]

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {point.name: point for point in entry_points(group=self.group)}

    def _register_entry_point(self, point: EntryPoint) -> None:
        try:
            item = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken third-party package, named in one line
            raise VitDeployError(f"the {self.kind} plug-in {point.name!r} ({point.value}) failed to load: "
                                 f"{type(exc).__name__}: {exc}") from exc
        declared = getattr(item, "name", point.name)
        if declared != point.name:
            raise VitDeployError(f"the {self.kind} plug-in {point.name!r} ({point.value}) calls itself {declared!r}")
        self.register(item, name=point.name)

