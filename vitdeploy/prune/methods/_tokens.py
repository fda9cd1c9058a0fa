"""What the static token methods share: their ``run`` and their calibration-data option."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from vitdeploy.prune.registry import METHODS, DataOption

CALIB = DataOption("--calib", "calibration data (its train split): fashion-mnist or an ImageFolder directory")


def run_token_method(model, config, context):
    """Draw the calibration images (when the method reads data and it is given), then apply the plan;
    a latency target is met when measured (``_to_latency_target``)."""
    from vitdeploy.prune.calibrate import calibration_images
    from vitdeploy.prune.token_methods import prune_tokens

    images = None
    if context.data and METHODS.get(config.method).data is not None:
        images = calibration_images(model, context.data, config.calib_size, config.seed, context.resize)
    if config.target_latency_ms is None:
        return prune_tokens(model, config, images, context.eval_data, progress=context.progress)
    return _to_latency_target(model, config, images, context)


def _to_latency_target(model, config, images, context):
    """The table checked and corrected for drift against the unpruned model measured now, the plan
    solved under the corrected table and measured against the target, and remade while it measures
    over it (``_measured_plan``)."""
    from vitdeploy.lut.measure import table_for_model
    from vitdeploy.lut.table import save_table
    from vitdeploy.prune.token_methods import accuracy_report

    table, drift = table_for_model(config.lut, model)
    with tempfile.TemporaryDirectory(prefix="vitdeploy-table-") as work:
        corrected = Path(work) / "table.json"
        save_table(table, corrected)
        pruned, report, check, attempts = _measured_plan(model, replace(config, lut=str(corrected)), table, drift,
                                                         images, context.progress)
    report["config"].update(lut=config.lut, target_latency_ms=config.target_latency_ms)
    report["latency"] = {**check, "drift": drift.to_dict(), "attempts": attempts}
    if context.eval_data is not None:
        report.update(accuracy_report(model, pruned, context.eval_data))
    return pruned, report


def _measured_plan(model, config, table, drift, images, progress):
    """(pruned, report, latency check, attempts). The plan for the target is measured; while it
    measures over the target, it is made again for a goal corrected by the measurements
    (``corrected_goal``, as the optimiser does), up to ``MEASURED_PLANS`` tries. A corrected goal
    below the method's reach is replaced by its cheapest plan. The first plan that meets the target
    is kept, else the fastest one measured."""
    from vitdeploy.lut.measure import MEASURED_PLANS, TARGET_TOLERANCE, corrected_goal, latency_check
    from vitdeploy.prune.token_methods import UnreachableTarget, prune_tokens

    goal_ms, attempts, made = config.target_latency_ms, [], []
    for _ in range(MEASURED_PLANS):
        try:
            pruned, report = prune_tokens(model, replace(config, target_latency_ms=goal_ms), images, progress=progress)
        except UnreachableTarget as exc:
            if not made:
                raise
            attempts.append({"goal_ms": goal_ms, "refused": str(exc)})
            if exc.lowest >= made[-1][2]["predicted_ratio"] * drift.measured_ms:
                break
            goal_ms = exc.lowest
            continue
        check = latency_check(table, drift, model, pruned, config.target_latency_ms)
        attempts.append({"goal_ms": goal_ms, "predicted_ratio": check["predicted_ratio"],
                         "measured_ratio": check["measured_ratio"]})
        made.append((pruned, report, check))
        goal = corrected_goal(check["target_ratio"], [(c["predicted_ratio"], c["measured_ratio"]) for *_, c in made])
        if check["measured_ratio"] <= check["target_ratio"] * (1 + TARGET_TOLERANCE) or goal is None or goal <= 0:
            break
        goal_ms = goal * drift.measured_ms
    return (*min(made, key=lambda plan: plan[2]["measured_ratio"]), attempts)
