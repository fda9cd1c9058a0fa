"""Rewrite rules for ``vitdeploy rewrite``: one module per rule, found by importing this package.

A rule finds candidate sites in a graph (``match``), says why a candidate must be left alone
(``check``) and rewrites a safe one in place (``apply``). To add a rule, add a module here
whose ``RewriteRule`` subclass is decorated with ``@register``, and its test under
``tests/export/rules/``. Modules whose name starts with ``_`` are not rules and are not imported.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from vitdeploy.errors import VitDeployError

_REGISTRY: dict[str, RewriteRule] = {}


@dataclass
class Match:
    """One place where a rule might apply, anchored at a node of ``graph``."""

    graph: gs.Graph
    node: gs.Node

    @property
    def label(self) -> str:
        return self.node.name or self.node.outputs[0].name


class RewriteRule(abc.ABC):
    """A graph rewrite that keeps the model's outputs; the rewrite driver checks that on ORT."""

    name: ClassVar[str]
    description: ClassVar[str]

    @abc.abstractmethod
    def match(self, graph: gs.Graph) -> list[Match]:
        """Every site the rule is about, including those ``check`` will turn down (they are reported)."""

    @abc.abstractmethod
    def check(self, match: Match) -> str | None:
        """Why rewriting ``match`` would be unsafe, or None when it is safe."""

    @abc.abstractmethod
    def apply(self, graph: gs.Graph, match: Match) -> dict:
        """Rewrite a checked match in place; returns the details that go into the report."""

    def unknown_shapes(self, graph: gs.Graph) -> list[gs.Tensor]:
        """Tensors whose static shape the rule needs but shape inference left unknown.

        The driver fills them in by running shape inference with the batch dim pinned.
        """
        return []


def register(rule_class: type[RewriteRule]) -> type[RewriteRule]:
    """Class decorator: make the rule available under its ``name``."""
    if rule_class.name in _REGISTRY:
        raise ValueError(f"two rewrite rules are named {rule_class.name!r}")
    _REGISTRY[rule_class.name] = rule_class()
    return rule_class


def available_rules() -> dict[str, RewriteRule]:
    """Every registered rule by name, in name order, after importing each module of this package."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    return dict(sorted(_REGISTRY.items()))


def select_rules(names: Iterable[str] | None = None) -> list[RewriteRule]:
    """The rules named (in the order given), or all of them for None; unknown names are an error."""
    rules = available_rules()
    if names is None:
        return list(rules.values())
    names = list(dict.fromkeys(names))
    unknown = [name for name in names if name not in rules]
    if unknown:
        raise VitDeployError(
            f"unknown rewrite rule(s) {', '.join(map(repr, unknown))}; available: {', '.join(rules)}"
        )
    return [rules[name] for name in names]


def describe_rules() -> str:
    """One ``name: description`` line per rule, for ``--help``."""
    return "\n".join(f"{name}: {rule.description}" for name, rule in available_rules().items())
