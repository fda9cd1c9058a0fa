"""What the settings of every static token method share (a light module: the CLI reads its defaults
without importing torch): the FLOPs and latency targets that stand in for a method's own knob.

Each method's settings live in its folder under ``vitdeploy.prune.methods`` as a dataclass that
extends ``TokenTargets`` with its knobs and names them in ``KNOBS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import check_fields, named, schema

Count = Annotated[int, Field(ge=1)]

TOKEN_OPTION_HELP = {
    "target_flops": "target FLOPs as a ratio of the unpruned model's, in (0, 1): the method's knob is bisected",
    "target_latency_ms": "target latency in ms predicted by --lut, instead of --target-flops: the knob is bisected",
    "lut": "latency table for --target-latency-ms (see `vitdeploy lut build --for`)",
    "calib_size": "calibration images drawn (seeded) from the train split",
    "seed": "calibration sampling and random plans",
}
"""Help of the options token methods share."""

TARGET_OPTIONS = {name: TOKEN_OPTION_HELP[name] for name in ("target_flops", "target_latency_ms", "lut")}
"""The target options every token method offers."""


@schema
@dataclass
class TokenTargets:
    method: str = ""
    target_flops: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Target MACs as a ratio of the unpruned model's, in (0, 1); bisects the method's knob."""
    target_latency_ms: Annotated[float, Field(gt=0)] | None = None
    """Target latency (ms) predicted by the latency table ``lut``; bisects the method's knob."""
    lut: str | None = None

    KNOBS: ClassVar[tuple[str, ...]] = ()
    """The method's own settings that may stand in for a target (exactly one of all is given)."""

    def validate(self):
        check_fields(self)
        choices = ("target_flops", "target_latency_ms", *self.KNOBS)
        if sum(getattr(self, name) is not None for name in choices) != 1:
            names = " or ".join(named(name) for name in choices)
            raise VitDeployError(f"{self.method} needs exactly one of {names}")
        if (self.target_latency_ms is None) != (self.lut is None):
            raise VitDeployError(f"{named('target_latency_ms')} and {named('lut')} go together: the table predicts "
                                 "the latency")
        return self


def token_config(method: str, **fields) -> TokenTargets:
    """The settings of the token method ``method`` from ``fields`` (not yet checked: ``validate()``)."""
    from vitdeploy.prune.registry import METHODS

    registered = METHODS.get(method)
    if registered.plan is None:
        raise VitDeployError(f"{method} is not a token method")
    return registered.config(**fields, **registered.fixed)
