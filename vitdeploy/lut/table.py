"""Latency lookup tables: schema, multilinear interpolation, prediction for a whole ``ViTSpec``.

A table holds measured medians (ms) for the parts a ViT block is made of, each on a small grid,
and predicts any block by interpolating linearly along every axis (multilinear interpolation).

Why the grid can be small. Per block (see ``vitdeploy.models.flops``) with N tokens, embed D,
A = H·qk and B = H·v, the MACs are ``N·D·(2A + B) + N·B·D + N²·(A + B)`` for attention and
``2·N·D·M`` for the MLP. Every term except N² is *multilinear* in the axes, so multilinear
interpolation reproduces a MAC-proportional latency exactly; the only interpolation error of the
cost model comes from N² (between grid points a < N < b it is ``(N − a)(b − N)`` per unit of N²
cost) and from real kernel-efficiency changes, which is where grid points must be placed.

Parts (each a ``PartTable``):

- ``attention`` over (tokens N, embed D, qk_width A = H·qk, v_width B = H·v): LayerNorm +
  attention + residual, measured with ``reference_heads`` heads (per-head dims A/H_ref, B/H_ref).
  Parametrising by the *total* widths keeps every MAC term multilinear; the head count enters
  only through per-head overheads (softmax over H·N² scores, per-head matmul efficiency).
- ``heads`` over (tokens N, heads H): the change in attention latency when the same total widths
  are split into H heads instead of ``reference_heads`` (measured interleaved at one probe width,
  so 0 at H_ref), added to ``attention``. It assumes the head-count effect does not depend on D,
  A or B, a first-order correction that is exact for the softmax term. It matters: on one EPYC
  core with ONNX Runtime, at N = 200 and widths 192, 12 heads cost 20 % more and 1 head 17 %
  less than 6 heads.
- ``mlp`` over (tokens N, embed D, mlp M): LayerNorm + MLP + residual.
- ``token_step`` over (tokens N, embed D): the extra cost of a block's token step (class-token
  attention row, TopK, gather, concat), measured as (block with a cls_attn step keeping half the
  patch tokens) − (the same block without). Used for every active step; a ``fixed`` step (a
  Gather only) costs less, a package token slightly more.
- ``fixed`` over (embed D): patch embedding, class/distillation tokens, position embedding, final
  norm and classifier head(s) for one input geometry (``StemGeometry``).

The last block of a non-distilled model runs its MLP on the class token alone: the exporter's
``token_gather_first`` pass moves the head's class-token gather above it (``export/fuse.py``).
``predict`` evaluates that MLP at one token, below the grid's token axis, by linear extrapolation
from the edge interval: exact for the MLP's MACs (linear in N), so it is not flagged.

A table may carry a ``Calibration``: ``measured ≈ scale·predicted + offset_ms``, fitted by least
squares on whole models measured right after the parts (``vitdeploy lut build --for MODEL``). It
absorbs what the sum of parts misses (graph-level fusion across parts, cache effects). Tables
without one predict the plain sum.

Values are stored rounded to 4 significant digits, flattened in C order (last axis fastest).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from vitdeploy.hardware import device_name, device_slug
from vitdeploy.errors import VitDeployError
from vitdeploy.io import write_json_atomic
from vitdeploy.models.spec import ViTSpec
from vitdeploy.quantize.config import INT8
from vitdeploy.schema import parse, read_json_bytes, schema

SCHEMA_VERSION = 1
SIGNIFICANT_DIGITS = 4
TABLES_DIR = Path("latency_tables")

PART_AXES: dict[str, tuple[str, ...]] = {
    "attention": ("tokens", "embed", "qk_width", "v_width"),
    "heads": ("tokens", "heads"),
    "mlp": ("tokens", "embed", "mlp"),
    "token_step": ("tokens", "embed"),
    "fixed": ("embed",),
}
SIGNED_PARTS = ("heads",)
"""Parts that store differences, which may be negative."""
MAX_PART_MS = 1e6
"""A quarter of an hour for one part: larger magnitudes are damage, not measurements."""
MAX_GRID_VALUE = 1 << 20
"""Above any token count, width or head count of a ViT part."""
MAX_IMAGE_SIZE, MAX_CHANNELS, MAX_CLASSES = 16384, 1024, 1_000_000
MAX_CALIBRATION_SCALE = 1000.0


@dataclass
class PartTable:
    """Medians (ms) of one part on a grid: ``axes`` name → increasing values; ``ms`` their product."""

    axes: dict[str, list[float]]
    ms: np.ndarray

    def interpolate(self, point: Mapping[str, float], exact_axes: Collection[str] = ()) -> tuple[float, list[str]]:
        """Multilinear interpolation at ``point``; also the axes it had to extrapolate along.

        Beyond the grid, each axis is extended linearly from its edge interval (an axis with a
        single value is constant), and the position is reported as extrapolated, except along
        ``exact_axes``, where the caller knows the part to be linear.
        """
        located, outside = [], []
        for name, values in self.axes.items():
            x = float(point[name])
            located.append(_locate(values, x))
            if not values[0] <= x <= values[-1] and name not in exact_axes:
                outside.append(f"{name}={x:g} outside [{values[0]:g}, {values[-1]:g}]")
        value = 0.0
        for corner in itertools.product((0, 1), repeat=len(located)):
            weight = math.prod(t if side else 1.0 - t for (_, t), side in zip(located, corner))
            if weight:
                value += weight * float(self.ms[tuple(i + side for (i, _), side in zip(located, corner))])
        return value, outside

    def to_dict(self) -> dict[str, Any]:
        return {"axes": {name: list(values) for name, values in self.axes.items()},
                "ms": [_round_significant(v) for v in self.ms.ravel().tolist()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], part: str) -> "PartTable":
        axes = data["axes"]
        if list(axes) != list(PART_AXES[part]):
            raise ValueError(f"{part}: axes must be {list(PART_AXES[part])}, found {list(axes)}")
        for name, values in axes.items():
            if not values or any(not _is_positive_number(v) or v > MAX_GRID_VALUE for v in values) \
                    or values != sorted(set(values)):
                raise ValueError(f"{part}.{name}: axis values must be in (0, {MAX_GRID_VALUE}] and strictly increasing")
        shape = tuple(len(values) for values in axes.values())
        ms = np.asarray(data["ms"], dtype=np.float64)
        if ms.size != math.prod(shape):
            raise ValueError(f"{part}: {ms.size} values for a grid of {math.prod(shape)} points")
        if not np.all(np.isfinite(ms)) or (part not in SIGNED_PARTS and np.any(ms < 0)) \
                or np.any(np.abs(ms) > MAX_PART_MS):
            raise ValueError(f"{part}: latencies must be finite" + ("" if part in SIGNED_PARTS else " and ≥ 0")
                             + f", at most {MAX_PART_MS:.0e} ms")
        return cls({name: list(values) for name, values in axes.items()}, ms.reshape(shape))


@schema
@dataclass(frozen=True)
class StemGeometry:
    """What the ``fixed`` part (patch embedding and classifier heads) was measured for."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    distilled: bool = False

    def validate(self) -> "StemGeometry":
        counts = {"img_size": (self.img_size, MAX_IMAGE_SIZE), "patch_size": (self.patch_size, self.img_size),
                  "in_chans": (self.in_chans, MAX_CHANNELS), "num_classes": (self.num_classes, MAX_CLASSES)}
        for name, (value, most) in counts.items():
            if not 1 <= value <= most:
                raise VitDeployError(f"stem {name} must be in 1..{most}, got {value}")
        return self

    @classmethod
    def of(cls, spec: ViTSpec) -> "StemGeometry":
        return cls(spec.img_size, spec.patch_size, spec.in_chans, spec.num_classes, spec.distilled)


@schema
@dataclass(frozen=True)
class Grid:
    """Where each part is measured. Axes are increasing; see ``table.py`` for what they mean.

    ``qk_width``/``v_width`` are total widths H·qk and H·v, measured with ``reference_heads``
    heads (so both must be divisible by it); the ``heads`` correction is measured at
    ``probe_width`` (embed = H·qk = H·v = probe_width), which every head count must divide.
    """

    name: str
    tokens: tuple[int, ...]
    embed: tuple[int, ...]
    qk_width: tuple[int, ...]
    v_width: tuple[int, ...]
    mlp: tuple[int, ...]
    heads: tuple[int, ...]
    reference_heads: int
    probe_width: int
    stem: StemGeometry

    def validate(self) -> "Grid":
        for axis in ("tokens", "embed", "qk_width", "v_width", "mlp", "heads"):
            values = getattr(self, axis)
            if not values or min(values) < 1 or list(values) != sorted(set(values)):
                raise VitDeployError(f"grid {self.name}: {axis} must be positive and strictly increasing")
            if max(values) > MAX_GRID_VALUE:
                raise VitDeployError(f"grid {self.name}: {axis} goes up to {max(values)}, beyond the "
                                     f"{MAX_GRID_VALUE} any ViT part has")
        if min(self.tokens) < 3:
            raise VitDeployError(f"grid {self.name}: token counts must be ≥ 3 (class token + 2 patches)")
        if any(w % self.reference_heads for w in self.qk_width + self.v_width):
            raise VitDeployError(f"grid {self.name}: qk/v widths must be divisible by reference_heads "
                                 f"{self.reference_heads}")
        if self.reference_heads not in self.heads or any(self.probe_width % h for h in self.heads):
            raise VitDeployError(f"grid {self.name}: heads must include reference_heads and divide probe_width")
        self.stem.validate()
        return self

    def timing_count(self) -> int:
        """How many timed measurements a build makes (for the progress bar)."""
        n, d = len(self.tokens), len(self.embed)
        return n * d * (len(self.qk_width) * len(self.v_width) + len(self.mlp)) + n + n * d + d

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "grid") -> "Grid":
        return parse(cls, data, where)


@schema
@dataclass
class TableMetadata:
    """Where and how a table was measured; ``device, backend, precision, batch`` is its key."""

    device: str
    backend: str
    precision: str
    batch: int
    threads: int | None
    environment: dict[str, Any]
    """``vitdeploy.hardware.environment()``: CPU/GPU, OS, library versions, thread count."""
    created: str
    timing_plan: dict[str, Any]
    grid: dict[str, Any]
    build_config: dict[str, Any]
    build_command: str
    engine: dict[str, Any] = field(default_factory=dict)
    """The first part engine's own ``Engine.metadata()`` (backend options, providers…)."""

    def __post_init__(self) -> None:
        """Hold the dict fields in their JSON form (lists, not tuples), as a loaded table does."""
        for name in ("environment", "timing_plan", "grid", "build_config", "engine"):
            setattr(self, name, json.loads(json.dumps(getattr(self, name))))


@schema
@dataclass(frozen=True)
class Calibration:
    """``measured ≈ scale·predicted + offset_ms`` for whole models, and how well it fits."""

    scale: float
    offset_ms: float
    models: int
    """How many whole models the fit was made on (0: set by hand, e.g. ``rescaled`` on a table without one)."""
    mape_before_pct: float | None = None
    """Mean absolute percentage error of the plain sum of parts on those models."""
    mape_after_pct: float | None = None
    """The same after calibration (in-sample)."""
    mape_loo_pct: float | None = None
    """Leave-one-out: each model predicted by a fit on the others (needs at least 3 models)."""

    def apply(self, raw_ms: float, include_fixed: bool) -> float:
        """Calibrated whole-model latency; blocks only (no fixed part) take the scale alone."""
        return self.scale * raw_ms + (self.offset_ms if include_fixed else 0.0)


IDENTITY = Calibration(scale=1.0, offset_ms=0.0, models=0)
"""What a table without a calibration predicts with."""


def fit_calibration(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> Calibration:
    """Least-squares ``measured ≈ scale·predicted + offset_ms`` over whole models (at least 2).

    When the affine fit's scale is not positive (noisy timings of nearly equal models), the fit
    falls back to ``measured ≈ scale·predicted``, whose scale is positive for positive latencies.
    """
    predicted, measured = np.asarray(predicted_ms, dtype=float), np.asarray(measured_ms, dtype=float)
    if len(predicted) < 2 or len(predicted) != len(measured):
        raise VitDeployError(f"a calibration needs at least 2 models with a prediction and a measurement each, "
                             f"got {len(predicted)} and {len(measured)}")
    scale, offset = _fit_line(predicted, measured)
    return Calibration(scale=scale, offset_ms=offset, models=len(predicted),
                       mape_before_pct=_mape(predicted, measured),
                       mape_after_pct=_mape(scale * predicted + offset, measured),
                       mape_loo_pct=_leave_one_out_mape(predicted, measured) if len(predicted) >= 3 else None)


def _fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    (scale, offset), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)
    if scale > 0 and math.isfinite(offset):
        return float(scale), float(offset)
    return float(np.dot(x, y) / np.dot(x, x)), 0.0


def _leave_one_out_mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    """MAPE of each model's calibrated prediction from a fit on all the other models."""
    held_out = []
    for i in range(len(predicted)):
        scale, offset = _fit_line(np.delete(predicted, i), np.delete(measured, i))
        held_out.append(scale * predicted[i] + offset)
    return _mape(np.asarray(held_out), measured)


def _mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    return 100 * float(np.mean(np.abs(predicted - measured) / measured))


@schema
@dataclass
class _PartFile:
    axes: dict[str, list[float]]
    ms: list[float]


@schema
@dataclass
class _TableFile:
    """A table file as JSON holds it; ``LatencyTable.from_dict`` checks what spans several fields."""

    schema_version: int
    metadata: TableMetadata
    reference_heads: int
    stem: StemGeometry
    fixed: _PartFile
    attention: _PartFile
    heads: _PartFile
    mlp: _PartFile
    token_step: _PartFile
    calibration: Calibration | None = None


@dataclass
class LatencyTable:
    metadata: TableMetadata
    reference_heads: int
    stem: StemGeometry
    fixed: PartTable
    attention: PartTable
    heads: PartTable
    mlp: PartTable
    token_step: PartTable
    calibration: Calibration | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        m = self.metadata
        return (m.device, m.backend, m.precision, m.batch)

    def part(self, name: str) -> PartTable:
        return getattr(self, name)

    def rescaled(self, factor: float) -> "LatencyTable":
        """A copy whose calibrated predictions are ``factor`` times these (drift correction:
        factor = measured / predicted latency of a reference model today)."""
        if not (math.isfinite(factor) and factor > 0):
            raise VitDeployError(f"cannot rescale a latency table by {factor!r}: the factor must be finite and > 0")
        calibration = self.calibration or IDENTITY
        return replace(self, calibration=replace(calibration, scale=calibration.scale * factor,
                                                 offset_ms=calibration.offset_ms * factor))

    def to_dict(self) -> dict[str, Any]:
        calibration = {} if self.calibration is None else {"calibration": asdict(self.calibration)}
        return {"schema_version": SCHEMA_VERSION, "metadata": asdict(self.metadata),
                "reference_heads": self.reference_heads, "stem": asdict(self.stem),
                **{name: self.part(name).to_dict() for name in PART_AXES}, **calibration}

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency table") -> "LatencyTable":
        """Validate decoded JSON (or JSON text) into a table; any problem raises ``VitDeployError``."""
        hint = "; rebuild it with `vitdeploy lut build`"
        file = parse(_TableFile, data, f"{where}: not a valid latency table")
        try:
            file.stem.validate()
            if file.schema_version != SCHEMA_VERSION:
                raise ValueError(f"schema_version {file.schema_version!r} is not the supported {SCHEMA_VERSION}")
            _check_ranges(file)
        except (ValueError, VitDeployError) as exc:
            raise VitDeployError(f"{where}: not a valid latency table ({exc}){hint}") from None
        _check_settings(file.metadata, where)
        try:
            table = cls(file.metadata, file.reference_heads, file.stem,
                        **{name: PartTable.from_dict(asdict(getattr(file, name)), name) for name in PART_AXES},
                        calibration=file.calibration)
            if table.reference_heads not in table.heads.axes["heads"]:
                raise ValueError(f"reference_heads {table.reference_heads} is not on the heads axis")
        except ValueError as exc:
            raise VitDeployError(f"{where}: not a valid latency table ({exc}){hint}") from None
        return table


def _check_ranges(file: _TableFile) -> None:
    """Counts within what a machine runs (batch, threads, reference heads) and a calibration that
    keeps predictions finite, and the stem's geometry."""
    from vitdeploy.backends import MAX_BATCH, MAX_THREADS

    counts = {"metadata.batch": (file.metadata.batch, MAX_BATCH),
              "metadata.threads": (file.metadata.threads or 1, MAX_THREADS),
              "reference_heads": (file.reference_heads, MAX_GRID_VALUE)}
    for name, (value, most) in counts.items():
        if not 1 <= value <= most:
            raise ValueError(f"{name} must be in 1..{most}, got {value}")
    calibration = file.calibration
    if calibration is not None and not (0 < calibration.scale <= MAX_CALIBRATION_SCALE
                                        and abs(calibration.offset_ms) <= MAX_PART_MS and calibration.models >= 0):
        raise ValueError(f"calibration.scale must be in (0, {MAX_CALIBRATION_SCALE:g}], |offset_ms| at most "
                         f"{MAX_PART_MS:.0e} and models ≥ 0")


@dataclass(frozen=True)
class BlockPrediction:
    """Predicted latency of one block: the sum of its parts, and any axes extrapolated."""

    ms: float
    parts: dict[str, float]
    extrapolated: tuple[str, ...]


def predict_block(table: LatencyTable, tokens: int, embed: int, heads: int, qk: int, v: int, mlp: int,
                  token_step: bool = False, mlp_tokens: int | None = None) -> BlockPrediction:
    """Latency (ms) of one block with ``tokens`` entering; ``qk``/``v`` are per-head dims.

    ``mlp_tokens``: the tokens the MLP part runs on when fewer than enter (one in the last block
    of a non-distilled export, N − r after a ToMe merge). Its cost is linear in them, so extrapolating below the grid's
    token axis is exact under the MAC model and is not flagged.
    """
    points = {
        "attention": {"tokens": tokens, "embed": embed, "qk_width": heads * qk, "v_width": heads * v},
        "heads": {"tokens": tokens, "heads": heads},
        "mlp": {"tokens": tokens if mlp_tokens is None else mlp_tokens, "embed": embed, "mlp": mlp},
    }
    if token_step:
        points["token_step"] = {"tokens": tokens, "embed": embed}
    parts, extrapolated = {}, []
    for part, point in points.items():
        exact = ("tokens",) if part == "mlp" and mlp_tokens is not None else ()
        parts[part], outside = table.part(part).interpolate(point, exact)
        extrapolated += [f"{part}.{axis}" for axis in outside]
    parts["attention"] = max(0.0, parts["attention"] + parts.pop("heads"))
    parts = {name: max(0.0, ms) for name, ms in parts.items()}
    return BlockPrediction(sum(parts.values()), parts, tuple(extrapolated))


def predict(table: LatencyTable, spec: ViTSpec, include_fixed: bool = True) -> dict[str, Any]:
    """Predicted latency of a whole model: total ms, the fixed part, and one entry per block.

    Token plans are followed through ``spec.tokens_entering()`` and ``spec.mlp_tokens()``; a block
    with an active token step adds the ``token_step`` part (a ToMe merge is priced as a class-token
    step: the table has no part of its own for the matching). In a non-distilled model the last block's MLP runs on the
    class token alone (``mlp_tokens`` 1), as in its fused export. ``include_fixed=False``
    predicts the blocks only, for a spec whose input geometry differs from the table's (latency
    *differences*, as latency-aware pruning uses them, do not need the fixed part).

    ``raw_ms`` is the sum of the parts; ``total_ms`` applies the table's calibration to it (its
    scale only for blocks-only predictions, whose offset belongs to no block).
    """
    blocks, extrapolated = [], []
    counts = zip(spec.blocks, spec.tokens_entering(), spec.mlp_tokens())
    for index, (block, tokens, mlp_tokens) in enumerate(counts, start=1):
        if index == spec.depth and not spec.has_dist_head:
            mlp_tokens = 1
        result = predict_block(table, tokens, spec.embed_dim, block.heads, block.qk_dim, block.v_dim,
                               block.mlp_dim, token_step=block.tokens.active,
                               mlp_tokens=None if mlp_tokens == tokens else mlp_tokens)
        parts = {f"{name}_ms": ms for name, ms in result.parts.items()}
        blocks.append({"block": index, "tokens": tokens, "mlp_tokens": mlp_tokens, "ms": result.ms, **parts})
        extrapolated += [f"block {index}: {axis}" for axis in result.extrapolated]
    fixed_ms = 0.0
    if include_fixed:
        fixed_ms, outside = _predict_fixed(table, spec)
        extrapolated += [f"fixed.{axis}" for axis in outside]
    raw_ms = fixed_ms + sum(b["ms"] for b in blocks)
    total_ms = (table.calibration or IDENTITY).apply(raw_ms, include_fixed)
    if not math.isfinite(total_ms):
        raise VitDeployError(f"the table predicts {total_ms} ms for {spec.name}: this model lies too far outside "
                             "its grid; build a table for it with `vitdeploy lut build --for MODEL`")
    return {"total_ms": total_ms, "raw_ms": raw_ms, "fixed_ms": fixed_ms, "blocks": blocks,
            "extrapolated": extrapolated}


def _predict_fixed(table: LatencyTable, spec: ViTSpec) -> tuple[float, list[str]]:
    geometry = StemGeometry.of(spec)
    if geometry != table.stem:
        raise VitDeployError(f"the table's fixed part was measured for {asdict(table.stem)}, but the model has "
                             f"{asdict(geometry)}: predict with include_fixed=False (blocks only) or build a "
                             "table for this geometry")
    ms, outside = table.fixed.interpolate({"embed": spec.embed_dim})
    return max(0.0, ms), outside


def _check_settings(meta: TableMetadata, where: str) -> None:
    """The timing plan and build settings a table records, validated as the tools that re-use them
    (``lut refresh``, whole-model measurements) read them."""
    from vitdeploy.backends import BuildConfig
    from vitdeploy.bench.harness import TimingPlan

    parse(TimingPlan, meta.timing_plan, f"{where}: metadata.timing_plan")
    parse(BuildConfig, {**meta.build_config, "batch_sizes": [meta.batch]}, f"{where}: metadata.build_config")
    Grid.from_dict(meta.grid, f"{where}: metadata.grid")


def load_table(path: str | Path) -> LatencyTable:
    """Read and validate a table; any problem with the file raises ``VitDeployError``."""
    path = Path(path)
    if not path.exists():
        raise VitDeployError(f"{path}: no such latency table; build one with `vitdeploy lut build`")
    return LatencyTable.from_dict(read_json_bytes(path), str(path))


def save_table(table: LatencyTable, path: str | Path) -> None:
    """Write ``table`` atomically (values rounded to 4 significant digits)."""
    write_json_atomic(path, table.to_dict())


def table_path(metadata: TableMetadata, root: str | Path = TABLES_DIR, model: str | None = None) -> Path:
    """``<root>/<device-slug>-<backend>-<precision>.json``, or for a table built for one model
    ``<root>/<device-slug>-<backend>-<precision>-<model>-b<batch>.json``."""
    return model_table_path(metadata.device, metadata.backend, metadata.precision, root, model, metadata.batch)


def model_table_path(device: str, backend: str, precision: str, root: str | Path = TABLES_DIR,
                     model: str | None = None, batch: int | None = None) -> Path:
    """Where ``table_path`` puts a table of that key, before there is one (``device``: its name)."""
    stem = f"{device_slug(device)}-{backend}-{precision}"
    if model is not None:
        stem += f"-{_file_safe(model)}-b{batch}"
    return Path(root) / f"{stem}.json"


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.") or "model"


def build_hint(model_ref: str, backend: str, batch: int, device: str = "cpu", int8: bool = False) -> str:
    """The command that builds a table for ``model_ref``, for error messages."""
    command = ["vitdeploy", "lut", "build", "--for", model_ref, "--backend", backend, "--batch", str(batch)]
    return shlex.join(command + (["--device", device] if device != "cpu" else []) + (["--precision", INT8] if int8
                                                                                      else []))


def require_table_for(table: LatencyTable, backend: str, batch: int, device: str, model_ref: str,
                      int8: bool = False) -> None:
    """Refuse a table measured with another backend, batch or device (``device``: "cpu" or "cuda"),
    or for INT8 graphs when the budget is for the float model, and the other way round."""
    meta, wanted = table.metadata, device_name(device)
    hint = build_hint(model_ref, backend, batch, device, int8)
    if (meta.backend, meta.batch, meta.device) != (backend, batch, wanted):
        raise VitDeployError(f"the latency table was measured with {meta.backend} at batch {meta.batch} on "
                             f"{meta.device!r}, not {backend} at batch {batch} on {wanted!r}: build one with "
                             f"`{hint}`")
    if (meta.precision == INT8) != int8:
        measured, wanted_precision = ("INT8", "the float") if not int8 else (meta.precision, "the INT8")
        raise VitDeployError(f"the latency table was measured on {measured} graphs, but this latency budget is for "
                             f"{wanted_precision} model: build a table for it with `{hint}`")


def require_coverage(table: LatencyTable, spec: ViTSpec, model_ref: str) -> None:
    """Refuse a table whose grid or input geometry does not cover ``spec`` (no extrapolation)."""
    meta = table.metadata
    hint = build_hint(model_ref, meta.backend, meta.batch, meta.build_config.get("device", "cpu"))
    try:
        extrapolated = predict(table, spec)["extrapolated"]
    except VitDeployError:
        raise VitDeployError(f"the latency table was measured for {_geometry(table.stem)} inputs, but {model_ref} "
                             f"takes {_geometry(StemGeometry.of(spec))}: build a table for it with `{hint}`") from None
    if extrapolated:
        more = f" and {len(extrapolated) - 3} more" if len(extrapolated) > 3 else ""
        raise VitDeployError(f"the latency table's grid does not cover {model_ref} ({'; '.join(extrapolated[:3])}"
                             f"{more}): build a table for it with `{hint}`")


def _geometry(stem: StemGeometry) -> str:
    return (f"{stem.img_size}×{stem.img_size}×{stem.in_chans}, patch {stem.patch_size}, {stem.num_classes} classes"
            + (", distilled" if stem.distilled else ""))


def _locate(values: list[float], x: float) -> tuple[int, float]:
    """Left index i and weight t with x = (1 − t)·values[i] + t·values[i + 1] (t outside [0, 1]
    beyond the grid); a single-value axis gives (0, 0)."""
    if len(values) == 1:
        return 0, 0.0
    i = int(np.clip(np.searchsorted(values, x, side="right") - 1, 0, len(values) - 2))
    return i, (x - values[i]) / (values[i + 1] - values[i])


def _round_significant(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
