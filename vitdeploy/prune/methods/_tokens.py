"""What the static token methods share: their ``run`` and their calibration-data option."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from vitdeploy.prune.registry import METHODS, DataOption

CALIB = DataOption("--calib", "calibration data (its train split): fashion-mnist or an ImageFolder directory")


def run_token_method(model, config, context):
    """Draw the calibration images (when the method reads data and it is given), then apply the plan;
    a latency target is met as NViT meets it (``_to_latency_target``)."""
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
    solved under the corrected table, and the result measured against the target."""
    from vitdeploy.lut.measure import latency_check, table_for_model
    from vitdeploy.lut.table import save_table
    from vitdeploy.prune.token_methods import prune_tokens

    table, drift = table_for_model(config.lut, model)
    with tempfile.TemporaryDirectory(prefix="vitdeploy-table-") as work:
        corrected = Path(work) / "table.json"
        save_table(table, corrected)
        pruned, report = prune_tokens(model, replace(config, lut=str(corrected)), images, context.eval_data,
                                      progress=context.progress)
    report["config"]["lut"] = config.lut
    report["latency"] = {**latency_check(table, drift, model, pruned, config.target_latency_ms),
                         "drift": drift.to_dict()}
    return pruned, report
