"""STAR and a-STAR (Zhang et al.): the class token's attention fused with offline inter-layer
relevance (gradient × attention rollouts) per patch position, with ACS-derived keep rates."""

from __future__ import annotations

from vitdeploy.prune.methods._tokens import CALIB, run_token_method
from vitdeploy.prune.methods.star.config import StarConfig
from vitdeploy.prune.registry import METHODS, PruneMethod
from vitdeploy.prune.summaries import prune_summary
from vitdeploy.prune.token_config import TARGET_OPTIONS, TOKEN_OPTION_HELP

OPTIONS = {
    **TARGET_OPTIONS,
    "rho": "keep rate of the last block, in (0, 1]; lower prunes more",
    "alpha": "fusion weight of the online class attention, in [0, 1]",
    "gamma": "top classes per image in the inter-layer scores",
    "rounds": "calibration rounds T",
    "calib_batch": "images per calibration round",
    "calib_size": TOKEN_OPTION_HELP["calib_size"],
    "seed": TOKEN_OPTION_HELP["seed"],
}


def plan_star(model, config: StarConfig, images, progress: bool):
    from vitdeploy.prune.methods.star import algorithm as star
    from vitdeploy.prune.token_methods import knob_or_target

    stats = star.calibrate(model, images, config.gamma, config.rounds, config.calib_batch, config.seed, progress)

    def make(rho: float):
        return star.star_spec(model.spec, stats, rho, config.alpha, adaptive=config.method == "a-star")

    rho, spec = knob_or_target(config.rho, make, config, model.spec, (1e-4, 1.0), "ρ")
    return spec, {"rho": rho, "keep_rates": star.keep_rates(stats.acs, rho), "star": stats.to_dict()}


def _register(name: str, help: str, description: str, static: bool = True) -> None:
    METHODS.register(PruneMethod(
        name=name, help=help,
        description=description + " Give --target-flops, --target-latency-ms with --lut, or --rho.",
        config=StarConfig, options=OPTIONS, run=run_token_method, summary=prune_summary, data=CALIB,
        fixed={"method": name}, plan=plan_star, static=static))


_register("star", "class attention fused with offline relevance, ACS keep rates (static counts)",
          "STAR (Zhang et al.): ranks patch tokens by S_intra^α · S_inter^(1−α), the class token's attention fused "
          "with offline per-position relevance; keep rates from the layers' average cosine similarity.")
_register("a-star", "STAR with input-dependent counts (PyTorch evaluation only, never exported)",
          "a-STAR: each image keeps the fewest tokens whose fused scores reach the step's rate, so the count "
          "depends on the input. Not a static graph: `vitdeploy export --as-static-star` exports its static "
          "STAR plan.",
          static=False)
