"""Build latency tables by profiling block parts on a grid, and measure how well they predict.

Each part (see ``table.py`` for the table design) is built from the model's own modules
(``vitdeploy.models.vit``): LayerNorm + ``Attention`` + residual, LayerNorm + ``Mlp`` + residual,
a ``Block`` with and without a token step, and a ``ViT`` with no blocks for the stem and heads.
A part becomes an engine through the chosen backend (ONNX backends get a small single-part
ONNX graph, the torch backend the module itself) and is timed with the shared harness at the
table's batch size; the table stores the median.

Part graphs are exported as whole models are (``export/onnx.py``): at the exporter's default
opset, then through ``export.fuse`` for the backend's target, so they are timed as the graphs
users deploy run.

The attention and MLP parts are exported with a dynamic token axis, so one engine serves every
token count on the grid: this cuts the number of exports (the slow step on CPU) by the length of
the token axis. TensorRT engines take only a dynamic batch axis, so there each token count gets
its own static engine (the backend's ``static_shapes``).

Every measurement is timed interleaved (``time_interleaved``) with one fixed reference part and
stored relative to it, then scaled by the reference's median over the whole build. On a shared
CPU the machine runs at half speed for seconds at a time (measured here: one part went from 1.6
to 3.8 ms for ten seconds); without the reference, a point measured in such a spell is off by 2×,
with it both slow down alike. Differences (head-count correction, token step) are timed in one
interleaved run as well, so drift hits both sides of the subtraction alike.

``grid_for`` derives a grid from one model: its own dims down to the smallest that structural
pruning reaches, so a pruner never leaves the grid. ``calibrate_table`` then times that model and
random pruned variants of it whole, and fits the table's ``Calibration`` to them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vitdeploy.backends import Backend, BuildConfig, Engine, ModelSource, get_backend
from vitdeploy.hardware import environment
from vitdeploy.bench.harness import TimingPlan, random_batch, time_interleaved
from vitdeploy.errors import VitDeployError
from vitdeploy.export import fuse
from vitdeploy.export.config import ExportConfig
from vitdeploy.export.onnx import quiet_exporter
from vitdeploy.lut.measure import build_config_of, measure_models
from vitdeploy.lut.table import (
    PART_AXES, Grid, LatencyTable, PartTable, StemGeometry, TableMetadata, fit_calibration, load_table, predict,
    save_table,
)
from vitdeploy.models.spec import BlockSpec, TokenStep, ViTSpec
from vitdeploy.models.vit import Attention, Block, Mlp, ViT
from vitdeploy.quantize.config import INT8

OPSET = ExportConfig().opset
"""Part graphs use the whole-model exporter's default opset (20: GELU is one ``Gelu`` op)."""
BUILD_PLAN = TimingPlan(warmup=3, iters=15, rounds=3)
"""Default timing for table builds: medians of 15 runs (the cpu-small grid then builds in ~4 minutes)."""
PROBE_DIM = 8
"""Per-head and MLP width of the small block that the token-step difference is measured on."""
GRID_FOR_TOKENS = 5
GRID_FOR_WIDTHS = 4
"""Values per axis of ``grid_for``'s grids: tokens spaced evenly, widths geometrically."""


GRIDS = {
    # DeiT-S-like shapes at 224×224 (197 tokens, D 384, 6 heads of 64, MLP 1536) and pruned
    # shapes below. N is spaced evenly (the N² error (N − a)(b − N) is then the same everywhere,
    # under 1 % of a block); D, A, B and M are near-linear, so few points suffice, placed densest
    # at the small widths where kernels lose efficiency. A, B down to 24 (e.g. 3 heads of 8).
    # 540 + 75 + 5 + 15 + 3 timings: about 4 minutes on 2 EPYC cores with ONNX Runtime, 11 KB.
    "cpu-small": Grid(
        name="cpu-small",
        tokens=(16, 50, 100, 150, 200),
        embed=(128, 256, 384),
        qk_width=(24, 48, 96, 192, 288, 384),
        v_width=(24, 48, 96, 192, 288, 384),
        mlp=(96, 384, 768, 1152, 1536),
        heads=(1, 2, 3, 4, 6, 8, 12),
        reference_heads=6,
        probe_width=192,
        stem=StemGeometry(224, 16, 3, 1000),
    ),
    # A few points around tests' tiny 32×32 model (16 patches + class token, D 32): seconds to build.
    "quick": Grid(
        name="quick",
        tokens=(5, 17),
        embed=(32,),
        qk_width=(8, 32),
        v_width=(32,),
        mlp=(32, 128),
        heads=(1, 2),
        reference_heads=2,
        probe_width=8,
        stem=StemGeometry(32, 8, 3, 5),
    ),
}


def default_grid(kind: str) -> Grid:
    if kind not in GRIDS:
        raise VitDeployError(f"unknown grid {kind!r}: choose one of {', '.join(GRIDS)}")
    return GRIDS[kind].validate()


def grid_for(spec: ViTSpec, round_to: int = 8) -> Grid:
    """A grid named ``for-<spec.name>`` covering ``spec`` and every model that structural pruning
    of it with ``round_to`` reaches, so that predictions for them never extrapolate.

    Tokens run from 3 (class token + 2 patches) to the model's count, widths from the pruned
    minimum to the model's largest block. The minimums are those of ``prune.methods.nvit.structural``'s
    ``smallest_spec`` (a layer above this one): one head, and ``round_to`` channels in every
    other dim (a dim already below ``round_to`` stays as it is).
    """
    if round_to < 1:
        raise VitDeployError(f"round_to must be at least 1, got {round_to}")
    tokens = spec.num_patches + spec.num_prefix_tokens
    if tokens < 3:
        raise VitDeployError(f"{spec.name} has {tokens} tokens; latency tables need at least 3 (class token + "
                             "2 patches): use a smaller patch size")
    blocks, embed = spec.blocks, spec.embed_dim
    reference = max(b.heads for b in blocks)
    heads, probe_width = _heads_axis(reference, embed)

    def widths(per_head: Callable[[BlockSpec], int]) -> tuple[int, ...]:
        """Total widths H·d, multiples of ``reference`` (the build splits them into that many heads)
        around the range: the smallest (one head) rounded down, the largest up. A smallest width
        below ``reference`` cannot be measured (e.g. one head of 8 with 12 reference heads): such
        blocks extrapolate, linearly, as the widths' MACs are."""
        low = max(reference, min(min(per_head(b), round_to) for b in blocks) // reference * reference)
        high = -(-max(b.heads * per_head(b) for b in blocks) // reference) * reference
        return _span(low, high, reference)

    return Grid(
        name=f"for-{spec.name}",
        tokens=tuple(sorted({round(n) for n in np.linspace(3, tokens, GRID_FOR_TOKENS)})),
        embed=_span(min(embed, round_to), embed, round_to),
        qk_width=widths(lambda b: b.qk_dim),
        v_width=widths(lambda b: b.v_dim),
        mlp=_span(min(min(b.mlp_dim, round_to) for b in blocks), max(b.mlp_dim for b in blocks), round_to),
        heads=heads,
        reference_heads=reference,
        probe_width=probe_width,
        stem=StemGeometry.of(spec),
    ).validate()


def _span(low: int, high: int, multiple: int, count: int = GRID_FOR_WIDTHS) -> tuple[int, ...]:
    """Up to ``count`` values from ``low`` to ``high`` (both kept), spaced geometrically, so densest
    at small widths where kernels lose efficiency; the inner ones rounded to multiples of ``multiple``."""
    inner = {multiple * round(low * (high / low) ** (k / (count - 1)) / multiple) for k in range(1, count - 1)}
    return tuple(sorted({low, high} | {v for v in inner if low < v < high}))


def _heads_axis(max_heads: int, embed: int) -> tuple[tuple[int, ...], int]:
    """Head counts from 1 to ``max_heads`` and a probe width that all of them divide: the multiple
    of their lcm nearest ``embed``. Counts that would push the lcm past ``embed`` are left out
    (1 and ``max_heads`` never are); the heads correction is interpolated between the rest."""
    heads, lcm = [1, max_heads], max_heads
    for h in range(2, max_heads):
        if math.lcm(lcm, h) <= max(embed, max_heads):
            heads.append(h)
            lcm = math.lcm(lcm, h)
    return tuple(sorted(set(heads))), lcm * max(1, round(embed / lcm))


def empty_parts(grid: Grid) -> dict[str, PartTable]:
    """Every part of a table shaped by ``grid``, all values NaN, for a build to fill in."""
    axes = {
        "attention": (grid.tokens, grid.embed, grid.qk_width, grid.v_width),
        "heads": (grid.tokens, grid.heads),
        "mlp": (grid.tokens, grid.embed, grid.mlp),
        "token_step": (grid.tokens, grid.embed),
        "fixed": (grid.embed,),
    }
    return {
        part: PartTable({name: list(values) for name, values in zip(PART_AXES[part], axes[part])},
                        np.full([len(values) for values in axes[part]], np.nan))
        for part in PART_AXES
    }


def build_table(backend_name: str, build_config: BuildConfig, grid: Grid, timing_plan: TimingPlan | None = None,
                device_batch: int = 8, progress: bool = True, command: str = "", int8: bool = False) -> LatencyTable:
    """Measure every part of ``grid`` on ``backend_name`` at batch ``device_batch``; ``command``
    (the command line that asked for it) is recorded in the metadata.

    ``int8``: time the parts as ``vitdeploy quantize`` writes them by default (Q/DQ in front of the
    weight MatMuls), their float layers at the backend's ``int8_float_precision``; the table's
    precision is then ``int8``, and every whole model measured for it is quantized the same way."""
    return _build(backend_name, build_config, grid, timing_plan or BUILD_PLAN, device_batch, progress, command,
                  int8=int8)


def _build(backend_name: str, build_config: BuildConfig, grid: Grid, plan: TimingPlan, device_batch: int,
           progress: bool, command: str, expected_device: str | None = None, int8: bool = False) -> LatencyTable:
    grid.validate()
    backend = get_backend(backend_name)
    config = replace(build_config, batch_sizes=(device_batch,))
    if int8:
        config = replace(config, precision=_int8_float_precision(backend))
    config.validate()
    with tempfile.TemporaryDirectory(prefix="vitdeploy-lut-") as work, \
            tqdm(total=grid.timing_count(), desc=f"latency table {grid.name}", disable=not progress) as bar:
        profiler = _Profiler(backend, config, plan, device_batch, Path(work), bar, expected_device, int8)
        profiler.use_reference(grid)
        parts = empty_parts(grid)
        _measure_attention(profiler, grid, parts["attention"])
        _measure_heads(profiler, grid, parts["heads"])
        _measure_mlp(profiler, grid, parts["mlp"])
        _measure_token_step(profiler, grid, parts["token_step"])
        _measure_fixed(profiler, grid, parts["fixed"])
        for part in parts.values():
            part.ms *= profiler.reference_ms
    metadata = TableMetadata(
        device=profiler.device_name, backend=backend_name, precision=INT8 if int8 else config.precision,
        batch=device_batch,
        threads=config.threads, environment=_environment(config),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), timing_plan=asdict(plan),
        grid=grid.to_dict(), build_config=config.to_dict(), build_command=command,
        engine=profiler.engine_metadata,
    )
    return LatencyTable(metadata, grid.reference_heads, grid.stem, **parts)


def _int8_float_precision(backend: Backend) -> str:
    if backend.int8_float_precision is None:
        raise VitDeployError(f"the {backend.name} backend does not run INT8 Q/DQ graphs: build INT8 tables with "
                             "--backend onnxruntime or tensorrt")
    return backend.int8_float_precision


def build_table_for(spec: ViTSpec, backend_name: str, build_config: BuildConfig, batch: int, round_to: int = 8,
                    calibration_models: int = 8, progress: bool = True, command: str = "",
                    int8: bool = False) -> LatencyTable:
    """A table on ``grid_for(spec)``, calibrated on ``spec`` and ``calibration_models`` random pruned
    variants of it timed whole (0: not calibrated)."""
    table = build_table(backend_name, build_config, grid_for(spec, round_to), device_batch=batch, progress=progress,
                        command=command, int8=int8)
    if not calibration_models:
        return table
    base = spec.static_counterpart() if spec.adaptive else spec
    return calibrate_table(table, [base, *random_pruned_specs(base, calibration_models, seed=0)], progress=progress)


def refresh_table(path: str | Path, timing_plan: TimingPlan | None = None, progress: bool = True) -> LatencyTable:
    """Re-measure the table at ``path`` with its own grid, backend, build config and batch.

    The file is replaced atomically, and only if this machine is the device the table describes.
    """
    old = load_table(path)
    meta = old.metadata
    plan = timing_plan or TimingPlan(**meta.timing_plan)
    new = _build(meta.backend, build_config_of(meta), Grid.from_dict(meta.grid, "metadata.grid"), plan, meta.batch,
                 progress, meta.build_command, meta.device, int8=meta.precision == INT8)
    new = replace(new, calibration=old.calibration)
    save_table(new, path)
    return new


def calibrate_table(table: LatencyTable, specs: Sequence[ViTSpec], plan: TimingPlan | None = None,
                    progress: bool = True) -> LatencyTable:
    """A copy of ``table`` calibrated on whole models built from ``specs`` (at least 2), each
    timed with the table's own backend, build config, batch and (by default) timing plan.

    The fit maps the plain sum of parts (``raw_ms``) to the measurements; ``calibration`` holds
    it with its errors before, after and leave-one-out.
    """
    uncalibrated = replace(table, calibration=None)
    predicted = [predict(uncalibrated, spec)["raw_ms"] for spec in specs]
    meta = table.metadata
    measured = _measure_specs(specs, meta, plan or TimingPlan(**meta.timing_plan), progress=progress)
    return replace(table, calibration=fit_calibration(predicted, measured))


def evaluate_table(table: LatencyTable, specs: Sequence[ViTSpec], backend: str, build_config: BuildConfig,
                   plan: TimingPlan | None = None) -> dict[str, Any]:
    """Measure whole models built from ``specs`` and compare with the table's predictions.

    Returns one row per spec (predicted, measured, signed error %) and the mean absolute
    percentage error (MAPE) over them.
    """
    meta = table.metadata
    if backend != meta.backend or build_config.precision != meta.build_config["precision"]:
        raise VitDeployError(f"the table is for {meta.backend} {meta.build_config['precision']}; evaluate it with "
                             "that backend and precision")
    rows = []
    for spec, measured in zip(specs, _measure_specs(specs, meta, plan, build_config)):
        predicted = predict(table, spec)
        rows.append({"name": spec.name, "predicted_ms": predicted["total_ms"], "measured_ms": measured,
                     "error_pct": 100 * (predicted["total_ms"] - measured) / measured,
                     "extrapolated": predicted["extrapolated"]})
    return {"key": list(table.key), "models": rows, "mape_pct": float(np.mean([abs(r["error_pct"]) for r in rows]))}


def _measure_specs(specs: Sequence[ViTSpec], metadata: TableMetadata, plan: TimingPlan | None,
                   config: BuildConfig | None = None, progress: bool = False) -> list[float]:
    """Median latency (ms) at the table's batch of a ``ViT`` (random weights) built from each spec,
    all timed interleaved."""
    models = {f"{i}-{spec.name}": ViT(spec).eval() for i, spec in enumerate(specs)}
    return list(measure_models(models, metadata, plan, config, progress).values())


def random_pruned_specs(base_spec: ViTSpec, n: int, seed: int = 0) -> list[ViTSpec]:
    """``n`` NViT-like pruned variants of ``base_spec``, the same for the same seed.

    Every block keeps its own random share (¼ to all) of heads, per-head qk/v dims and MLP width,
    dims rounded down to multiples of 8; the original softmax scale is kept, as pruning does.
    Each spec also gets a random static token plan: up to three cls_attn steps keeping 50–90 % of
    the patch tokens entering them, some with a package token.
    """
    rng = np.random.default_rng(seed)
    return [_random_pruned_spec(base_spec, rng, f"{base_spec.name}-pruned-s{seed}-{i}") for i in range(n)]


def _random_pruned_spec(base: ViTSpec, rng: np.random.Generator, name: str) -> ViTSpec:
    blocks = [
        BlockSpec(heads=_shrunk(b.heads, rng, multiple=1), qk_dim=_shrunk(b.qk_dim, rng), v_dim=_shrunk(b.v_dim, rng),
                  mlp_dim=_shrunk(b.mlp_dim, rng), attn_scale=b.scale)
        for b in base.blocks
    ]
    spec = replace(base, blocks=blocks, name=name)
    return spec.with_token_plan(_random_token_plan(spec, rng))


def _shrunk(dim: int, rng: np.random.Generator, multiple: int = 8, min_share: float = 0.25) -> int:
    """A random size in [min_share·dim, dim], a multiple of ``multiple`` (dims below it stay)."""
    if dim < multiple:
        return dim
    low = max(1, math.ceil(min_share * dim / multiple))
    return multiple * int(rng.integers(low, dim // multiple + 1))


def _random_token_plan(spec: ViTSpec, rng: np.random.Generator) -> dict[int, TokenStep]:
    """Steps on blocks other than the last (after it, only the class token is read)."""
    candidates = spec.depth - 1
    steps = int(rng.integers(0, min(3, candidates) + 1))
    plan, patches = {}, spec.num_patches
    for index in sorted(rng.choice(candidates, size=steps, replace=False).tolist()):
        patches = max(1, round(float(rng.uniform(0.5, 0.9)) * patches))
        plan[index] = TokenStep(keep=patches, selector="cls_attn", package=bool(rng.random() < 0.3))
    return plan


class _AttentionPart(nn.Module):
    """LayerNorm + attention + residual: the first half of a ``Block``."""

    def __init__(self, dim: int, block: BlockSpec, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, block, qkv_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))[0]


class _MlpPart(nn.Module):
    """LayerNorm + MLP + residual: the second half of a ``Block``."""

    def __init__(self, dim: int, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class _BlockPart(nn.Module):
    """A whole ``Block`` (token step included) with the tokens as its only output; its layers are
    named as in a ``ViT`` (``blocks.0.…``)."""

    def __init__(self, block: Block):
        super().__init__()
        self.blocks = nn.ModuleList([block])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[0](x)[0]


class _PartSource(ModelSource):
    """One block part as a ``ModelSource``; its input is activations (batch, tokens, embed).

    ``onnx_path(target)`` exports the part alone (no whole-model checks: there is no image input
    and no token plan to audit), with a dynamic token axis if asked.
    """

    def __init__(self, module: nn.Module, name: str, work_dir: Path, example: tuple[int, int, int],
                 dynamic_tokens: bool):
        super().__init__(name, work_dir, model=module.eval())
        self.example, self.dynamic_tokens = example, dynamic_tokens
        self._part_onnx: Path | None = None

    def onnx_path(self, target: str = "onnxruntime") -> Path:
        if self._part_onnx is None:
            self._part_onnx = self.work_dir / f"{self.name}.onnx"
            export_part(self.torch_model(), self._part_onnx, self.example, self.dynamic_tokens, target)
        return self._part_onnx

    def input_shape(self) -> tuple[int, int]:
        return self.example[1:]


def export_part(module: nn.Module, path: Path, example: tuple[int, int, int], dynamic_tokens: bool = False,
                target: str = "onnxruntime") -> fuse.FusionReport:
    """Export one part, input (batch, tokens, embed) shaped like ``example``, as the whole-model
    exporter writes models: opset ``OPSET``, then ``fuse.fuse`` for ``target``."""
    dynamic_shapes = ({1: torch.export.Dim("tokens", min=2)},) if dynamic_tokens else None
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(module, (torch.zeros(example),), dynamo=True, opset_version=OPSET,
                                    input_names=["input"], output_names=["output"],
                                    dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    program.save(str(path))
    return fuse.fuse(path, target, OPSET)


class _Profiler:
    """Builds engines through one backend and times them at the table's batch size."""

    def __init__(self, backend: Backend, config: BuildConfig, plan: TimingPlan, batch: int, work_dir: Path, bar: tqdm,
                 expected_device: str | None, int8: bool):
        self.backend, self.config, self.plan, self.batch = backend, config, plan, batch
        self.work_dir, self.bar, self.expected_device, self.int8 = work_dir, bar, expected_device, int8
        self.device_name = ""
        self.engine_metadata: dict[str, Any] = {}

    def engine(self, source: ModelSource) -> Engine:
        if self.int8:
            from vitdeploy.quantize.ptq import Int8Source  # ONNX Runtime's quantizer: only for INT8 tables

            source = Int8Source(source, self.batch)
        engine = self.backend.build(source, self.config)
        if not self.device_name:
            self.device_name, self.engine_metadata = engine.device_name, engine.metadata()
            if self.expected_device not in (None, self.device_name):
                raise VitDeployError(f"the table was measured on {self.expected_device!r}, but this machine is "
                                     f"{self.device_name!r}: build a new table instead of refreshing this one")
        return engine

    def part_engine(self, module: nn.Module, name: str, tokens: int, embed: int, dynamic_tokens: bool) -> Engine:
        return self.engine(_PartSource(module, name, self.work_dir, (self.batch, tokens, embed), dynamic_tokens))

    def engines_by_tokens(self, module: nn.Module, name: str, token_counts: Sequence[int],
                          embed: int) -> Iterator[tuple[int, Engine]]:
        """(token count, engine) for each count: one dynamic-token engine serves them all, except
        on backends with static shapes, where each count gets its own static engine, built lazily."""
        if self.backend.static_shapes:
            for tokens in token_counts:
                yield tokens, self.part_engine(module, f"{name}-n{tokens}", tokens, embed, dynamic_tokens=False)
            return
        engine = self.part_engine(module, name, max(token_counts), embed, dynamic_tokens=True)
        for tokens in token_counts:
            yield tokens, engine

    def use_reference(self, grid: Grid) -> None:
        """Time every later measurement interleaved with a fixed reference part (the grid's largest
        MLP part), and record it relative to the reference (see ``reference_ms``)."""
        tokens, embed = max(grid.tokens), max(grid.embed)
        self.reference = self.part_engine(_MlpPart(embed, max(grid.mlp)), "reference", tokens, embed,
                                          dynamic_tokens=False)
        self.reference_shape = (tokens, embed)
        self.reference_medians: list[float] = []

    @property
    def reference_ms(self) -> float:
        """The reference's median over the whole build: what one relative unit is in ms."""
        return float(np.median(self.reference_medians))

    def relative_latency(self, engine: Engine, name: str, input_shape: tuple[int, ...]) -> float:
        return self.relative_latencies({name: engine}, input_shape)[name]

    def relative_latencies(self, engines: dict[str, Engine], input_shape: tuple[int, ...]) -> dict[str, float]:
        """Medians of ``engines`` on one input shape, timed interleaved with the reference, each
        divided by the reference's median of the same run: a machine that slows down for a while
        (on a shared CPU, whole seconds at half speed) slows both alike, and the ratio stays."""
        batches = {name: random_batch(self.batch, input_shape) for name in engines}
        batches[_REFERENCE] = random_batch(self.batch, self.reference_shape)
        measurements = time_interleaved({**engines, _REFERENCE: self.reference}, batches, self.plan)
        reference = measurements.pop(_REFERENCE).median_ms
        self.reference_medians.append(reference)
        self.bar.update()
        return {name: m.median_ms / reference for name, m in measurements.items()}


_REFERENCE = "reference part"


def _measure_over_tokens(profiler: _Profiler, grid: Grid, part: PartTable, name: str,
                         make_module: Callable[..., nn.Module]) -> None:
    """Fill ``part`` (tokens first, then embed and other axes): for each combination of the
    other axes, the part timed at every token count."""
    other_axes = dict(list(part.axes.items())[1:])
    for index in np.ndindex(*(len(values) for values in other_axes.values())):
        point = {axis: int(values[i]) for (axis, values), i in zip(other_axes.items(), index)}
        label = "-".join([name, *(f"{axis}{value}" for axis, value in point.items())])
        engines = profiler.engines_by_tokens(make_module(**point), label, grid.tokens, point["embed"])
        for t, (tokens, engine) in enumerate(engines):
            part.ms[(t, *index)] = profiler.relative_latency(engine, f"{label}-n{tokens}", (tokens, point["embed"]))


def _attention_block(qk_width: int, v_width: int, heads: int) -> BlockSpec:
    return BlockSpec(heads=heads, qk_dim=qk_width // heads, v_dim=v_width // heads, mlp_dim=PROBE_DIM)


def _measure_attention(profiler: _Profiler, grid: Grid, part: PartTable) -> None:
    def make(embed: int, qk_width: int, v_width: int) -> nn.Module:
        return _AttentionPart(embed, _attention_block(qk_width, v_width, grid.reference_heads))

    _measure_over_tokens(profiler, grid, part, "attention", make)


def _measure_mlp(profiler: _Profiler, grid: Grid, part: PartTable) -> None:
    _measure_over_tokens(profiler, grid, part, "mlp", lambda embed, mlp: _MlpPart(embed, mlp))


def _measure_heads(profiler: _Profiler, grid: Grid, part: PartTable) -> None:
    """Attention at probe width split into H heads, minus the same with ``reference_heads``."""
    width = grid.probe_width
    streams = [profiler.engines_by_tokens(_AttentionPart(width, _attention_block(width, width, h)), f"heads{h}",
                                          grid.tokens, width) for h in grid.heads]
    for t, (tokens, step) in enumerate(zip(grid.tokens, zip(*streams))):
        engines = {f"heads{h}": engine for h, (_, engine) in zip(grid.heads, step)}
        relative = profiler.relative_latencies(engines, (tokens, width))
        reference = relative[f"heads{grid.reference_heads}"]
        part.ms[t] = [relative[f"heads{h}"] - reference for h in grid.heads]


def _measure_token_step(profiler: _Profiler, grid: Grid, part: PartTable) -> None:
    """A small block with a cls_attn step keeping half its patch tokens, minus the same block
    without a step (static token counts: the step's TopK k is a constant)."""
    for (t, tokens), (e, embed) in itertools.product(enumerate(grid.tokens), enumerate(grid.embed)):
        patches = tokens - 1
        step = TokenStep(keep=max(1, patches // 2), selector="cls_attn")
        spec = _probe_spec(grid.stem, embed)
        engines = {
            label: profiler.part_engine(_BlockPart(Block(spec, replace(spec.blocks[0], tokens=s), patches)),
                                        f"token-step-{label}-n{tokens}-embed{embed}", tokens, embed,
                                        dynamic_tokens=False)
            for label, s in (("with", step), ("without", TokenStep()))
        }
        relative = profiler.relative_latencies(engines, (tokens, embed))
        part.ms[t, e] = max(0.0, relative["with"] - relative["without"])


def _measure_fixed(profiler: _Profiler, grid: Grid, part: PartTable) -> None:
    """A ``ViT`` of the grid's geometry with its blocks removed: stem, final norm and heads."""
    for e, embed in enumerate(grid.embed):
        model = ViT(replace(_probe_spec(grid.stem, embed), distilled=grid.stem.distilled))
        model.blocks = nn.ModuleList()
        source = ModelSource(f"fixed-embed{embed}", profiler.work_dir, model=model.eval())
        part.ms[e] = profiler.relative_latency(profiler.engine(source), source.name, source.input_shape())


def _probe_spec(stem: StemGeometry, embed: int) -> ViTSpec:
    """A one-block spec of the stem's geometry with a minimal block (the block itself is not timed
    for the fixed part, and is the small carrier of the token-step difference)."""
    block = BlockSpec(heads=1, qk_dim=PROBE_DIM, v_dim=PROBE_DIM, mlp_dim=PROBE_DIM)
    return ViTSpec(img_size=stem.img_size, patch_size=stem.patch_size, in_chans=stem.in_chans, embed_dim=embed,
                   num_classes=stem.num_classes, blocks=[block], mean=(0.5,) * stem.in_chans,
                   std=(0.5,) * stem.in_chans, name="lut-probe").validate()


def _environment(config: BuildConfig) -> dict[str, Any]:
    """The machine and library versions, plus the exporter's and vitdeploy's own versions."""
    versions = {}
    for name in ("onnx", "vitdeploy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {**environment(config.threads), **versions, "part_onnx_opset": OPSET}
