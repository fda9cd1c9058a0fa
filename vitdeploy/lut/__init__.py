"""Latency lookup tables: measure block parts on a grid once, predict any (pruned) ViT's latency.

``table.py`` holds the schema, interpolation, prediction, calibration and the checks that a table
fits a model and a deployment; ``build.py`` profiles a grid through a backend, derives grids
from a model, calibrates a table on whole models and measures its accuracy.
"""

from vitdeploy.lut.build import (
    Grid, build_table, build_table_for, calibrate_table, default_grid, empty_parts, evaluate_table, export_part,
    grid_for, random_pruned_specs, refresh_table,
)
from vitdeploy.lut.table import (
    BlockPrediction, Calibration, LatencyTable, PartTable, StemGeometry, TableMetadata, build_hint, fit_calibration,
    load_table, model_table_path, predict, predict_block, require_coverage, require_table_for, save_table,
    table_path,
)

__all__ = [
    "BlockPrediction", "Calibration", "Grid", "LatencyTable", "PartTable", "StemGeometry", "TableMetadata",
    "build_hint", "build_table", "build_table_for", "calibrate_table", "default_grid", "empty_parts",
    "evaluate_table", "export_part", "fit_calibration", "grid_for", "load_table", "model_table_path", "predict",
    "predict_block", "random_pruned_specs", "refresh_table", "require_coverage", "require_table_for", "save_table",
    "table_path",
]
