"""What the static token methods share as their ``run``."""

from __future__ import annotations


def run_token_method(model, config, context):
    """Draw the calibration images (when the method's data is given), then apply the method's plan."""
    from vitdeploy.prune.calibrate import calibration_images
    from vitdeploy.prune.token_methods import prune_tokens

    images = None
    if context.data:
        images = calibration_images(model, context.data, config.calib_size, config.seed, context.resize)
    return prune_tokens(model, config, images, context.eval_data, progress=context.progress)
