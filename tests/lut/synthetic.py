"""Synthetic latency tables for the lut tests: parts filled from known cost functions."""

import numpy as np

from vitdeploy.backends import BuildConfig
from vitdeploy.lut import Grid, LatencyTable, StemGeometry, TableMetadata, empty_parts

GRID = Grid(
    name="synthetic", tokens=(5, 10, 20, 40), embed=(16, 32, 64), qk_width=(8, 16, 32, 64), v_width=(8, 32, 64),
    mlp=(32, 64, 128, 256), heads=(1, 2, 4), reference_heads=2, probe_width=8, stem=StemGeometry(32, 8, 3, 5),
).validate()


def attention_macs(tokens, embed, qk_width, v_width):
    """The attention MACs without the N² term: multilinear in every axis."""
    return tokens * embed * (2 * qk_width + v_width) + tokens * v_width * embed


def metadata(**overrides) -> TableMetadata:
    fields = dict(device="Test CPU @ 1.00GHz", backend="onnxruntime", precision="fp32", batch=8, threads=2,
                  environment={"cpu": "Test CPU", "torch": "2.13.0"}, created="2026-01-01T00:00:00+00:00",
                  timing_plan={"warmup": 3, "iters": 15, "min_seconds": 0.0, "rounds": 3}, grid=GRID.to_dict(),
                  build_config=BuildConfig().to_dict(), build_command="vitdeploy lut build")
    fields.update(overrides)
    return TableMetadata(**fields)


def synthetic_table(grid: Grid = GRID, meta: dict | None = None, **functions) -> LatencyTable:
    """A table whose parts hold ``functions[part](**axes)`` (default: a multilinear cost model);
    ``meta`` overrides metadata fields."""
    defaults = {
        "attention": lambda **axes: 0.5 + 1e-4 * attention_macs(**axes),
        "heads": lambda tokens, heads: 0.01 * tokens * (heads - grid.reference_heads),
        "mlp": lambda tokens, embed, mlp: 0.25 + 2e-4 * tokens * embed * mlp,
        "token_step": lambda tokens, embed: 1e-3 * tokens * embed,
        "fixed": lambda embed: 1.0 + 0.01 * embed,
    }
    parts = empty_parts(grid)
    for name, part in parts.items():
        mesh = np.meshgrid(*(np.asarray(v, dtype=float) for v in part.axes.values()), indexing="ij")
        part.ms[...] = functions.get(name, defaults[name])(**dict(zip(part.axes, mesh)))
    return LatencyTable(metadata(**{"grid": grid.to_dict(), **(meta or {})}), grid.reference_heads, grid.stem,
                        **parts)


def table_for_this_machine(spec, batch: int = 4) -> LatencyTable:
    """A synthetic table on ``grid_for(spec)`` keyed to this machine's CPU, ONNX Runtime and ``batch``:
    it covers ``spec`` and everything pruning makes of it, and passes every check of a table's key."""
    from vitdeploy.hardware import device_name
    from vitdeploy.lut import grid_for

    meta = dict(device=device_name("cpu"), batch=batch, build_config=BuildConfig(batch_sizes=(batch,)).to_dict())
    return synthetic_table(grid_for(spec), meta)
