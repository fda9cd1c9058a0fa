"""The pruning-method registry: every method is one module in ``vitdeploy.prune.methods`` that
registers a ``PruneMethod`` with ``METHODS.register``; installed packages add methods through the
entry-point group ``vitdeploy.prune_methods``.

A method names its settings dataclass and which of its fields the command line offers (with
their help); ``vitdeploy prune <method>`` builds its options from them. The registry stays light
(no torch at import), so ``--help`` is fast: methods import their algorithms inside ``run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitdeploy.registry import Registry
from vitdeploy.schema import validated


@dataclass(frozen=True)
class DataOption:
    """The data a method reads: the flag that names it, what it is for, whether it must be given."""

    flag: str
    help: str
    required: bool = True


@dataclass
class PruneContext:
    """Everything a method's ``run`` gets besides the model and its settings."""

    data: str | None
    """The source named by the method's ``DataOption`` (fashion-mnist or an ImageFolder directory)."""
    eval_data: Any = None
    """A test dataset to report top-1 on, or None."""
    out: str = ""
    resize: bool = False
    progress: bool = True
    pipeline: Any = None
    """How training images are prepared (a ``vitdeploy.data.pipeline.Pipeline``; None: evaluation transform)."""


@dataclass(frozen=True)
class PruneMethod:
    name: str
    help: str
    """One line for ``vitdeploy prune --help``."""
    description: str
    """The paragraph that opens ``vitdeploy prune NAME --help``."""
    config: type
    """A dataclass with a ``validate()`` that returns it; the method's settings."""
    options: dict[str, str]
    """Config fields offered as ``--field-name`` options → their help text."""
    run: Callable[[Any, Any, PruneContext], tuple[Any, dict]]
    """(model, config, context) → (pruned model, JSON-ready report); token methods share
    ``vitdeploy.prune.methods._tokens.run_token_method``."""
    summary: Callable[[dict, str], str]
    """(report, output directory) → the text printed when ``--json`` is not given."""
    data: DataOption | None = None
    fixed: dict[str, Any] = field(default_factory=dict)
    """Config fields the method sets itself (e.g. ``method="star"`` on a shared config)."""
    plan: Callable[[Any, Any, Any, bool], tuple[Any, dict]] | None = None
    """Token methods: (model, config, calibration images, progress) → (spec with the plan, details)."""
    static: bool = True
    """False when the pruned model keeps an input-dependent number of tokens: not a static graph, so it
    is never exported, measured or raced by the optimiser."""
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    """Command-line defaults that differ from the config's (e.g. no target until one is given)."""

    @property
    def knobs(self) -> tuple[str, ...]:
        """Token methods: the settings that may stand in for a target (their config's ``KNOBS``)."""
        return getattr(self.config, "KNOBS", ())

    def make_config(self, values: dict[str, Any], name: Callable[[str], str] = str, known_only: bool = False) -> Any:
        """The method's settings from ``values``, checked; ``name`` says how messages name a field
        (e.g. ``schema.flag_name`` when the values came from the command line). ``known_only``
        drops the values the method has no field for (shared settings offered to every method)."""
        if known_only:
            fields = {f.name for f in dataclasses.fields(self.config)}
            values = {key: value for key, value in values.items() if key in fields}
        return validated(self.config(**values, **self.fixed), name)

    def prune(self, model, config, context: PruneContext) -> tuple[Any, dict]:
        return self.run(model, config, context)


METHODS: Registry[PruneMethod] = Registry("pruning method", group="vitdeploy.prune_methods",
                                         package="vitdeploy.prune.methods")
