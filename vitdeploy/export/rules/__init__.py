"""Rewrite rules for ``vitdeploy rewrite``: one module per rule, found by importing this package.

A rule finds candidate sites in a graph (``match``), says why a candidate must be left alone
(``check``) and rewrites a safe one in place (``apply``). To add a rule, add a module here
whose ``RewriteRule`` subclass is decorated with ``@RULES.register``, and its test under
``tests/export/rules/``. Modules whose name starts with ``_`` are not rules and are not imported.
Installed packages add rules through the entry-point group ``vitdeploy.rewrite_rules``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import onnx_graphsurgeon as gs

from vitdeploy.registry import Registry

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


RULES: Registry[RewriteRule] = Registry("rewrite rule", group="vitdeploy.rewrite_rules", package=__name__,
                                       instances=True)
