"""Latency lookup tables: measure block parts on a grid once, predict any (pruned) ViT's latency.

``table.py`` holds the schema, interpolation and prediction; ``build.py`` profiles a grid through
a backend and measures a table's accuracy on whole models.
"""

from vitdeploy.lut.build import (
    Grid, build_table, default_grid, empty_parts, evaluate_table, random_pruned_specs, refresh_table,
)
from vitdeploy.lut.table import (
    BlockPrediction, LatencyTable, PartTable, StemGeometry, TableMetadata, load_table, predict, predict_block,
    save_table, table_path,
)

__all__ = [
    "BlockPrediction", "Grid", "LatencyTable", "PartTable", "StemGeometry", "TableMetadata", "build_table",
    "default_grid", "empty_parts", "evaluate_table", "load_table", "predict", "predict_block",
    "random_pruned_specs", "refresh_table", "save_table", "table_path",
]
