"""Patch Slimming (Tang et al.): a top-down fixed-position pyramid, exported as constant Gathers."""

from __future__ import annotations

from vitdeploy.prune.methods._tokens import CALIB, run_token_method
from vitdeploy.prune.methods.patch_slimming.config import PatchSlimmingConfig
from vitdeploy.prune.registry import METHODS, PruneMethod
from vitdeploy.prune.summaries import prune_summary
from vitdeploy.prune.token_config import TARGET_OPTIONS, TOKEN_OPTION_HELP

EPSILON_BISECTION_STEPS = 16
"""Each ε step runs the whole top-down pass, so ε gets fewer (it spans 7 decades: ~0.4 % apart)."""
EPSILON_RANGE = (1e-6, 10.0)


def plan_patch_slimming(model, config: PatchSlimmingConfig, images, progress: bool):
    from vitdeploy.prune.methods.patch_slimming import algorithm as patch_slimming
    from vitdeploy.prune.token_methods import knob_or_target

    calib = patch_slimming.SlimmingCalibration(model, images)
    per_layer_bar = progress and config.epsilon is not None  # else the bisection has the bar

    def make(eps: float):
        plan = patch_slimming.slimming_plan(calib, eps, config.granularity, progress=per_layer_bar)
        return patch_slimming.slimming_spec(model.spec, plan)

    eps, spec = knob_or_target(config.epsilon, make, config, model.spec, EPSILON_RANGE, "ε", log=True,
                               increasing=False, steps=EPSILON_BISECTION_STEPS, progress=progress)
    return spec, {"epsilon": eps}


METHODS.register(PruneMethod(
    name="patch-slimming", help="top-down fixed-position pyramid (constant Gathers, no TopK)",
    description="Patch Slimming (Tang et al.): the last block keeps only the class token; going down, each block "
                "keeps every patch the next one keeps and adds patches by significance until the class token's "
                "relative feature error is at most ε. Give --target-flops, --target-latency-ms with --lut, or --epsilon.",
    config=PatchSlimmingConfig,
    options={**TARGET_OPTIONS,
             "epsilon": "tolerated relative error of the class token's final features; higher prunes more",
             "granularity": "patches added per greedy step, r'",
             "calib_size": TOKEN_OPTION_HELP["calib_size"], "seed": TOKEN_OPTION_HELP["seed"]},
    run=run_token_method, summary=prune_summary, data=CALIB, fixed={"method": "patch-slimming"}, plan=plan_patch_slimming))
