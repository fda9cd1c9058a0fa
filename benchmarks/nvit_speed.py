"""Measured ONNX Runtime CPU speedup of the NViT-compacted models against their FLOPs ratio.

    .venv/bin/python benchmarks/nvit_speed.py [--batch 8,64]

Reads the per-block dims of every compacted model in nvit-fmnist.json (Hessian and magnitude at
each FLOPs level, and the 2:4 model), builds each shape with the reference model's softmax
scale, exports it through the checked exporter and times all of them interleaved in one process
(2 threads). Latency depends on shapes only, so the weights are the seeded init; the 2:4 model
runs dense kernels here (ONNX Runtime's CPU provider has no 2:4 kernels). The unpruned model is
also timed through torch's TorchScript exporter (``--no-other-exporter-baseline`` leaves it out), and
speedups are quoted against the faster of the two baselines.
Writes benchmarks/results/nvit-speed-fmnist_vit-<cpu>-onnxruntime.{json,md,png,summary.md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from common import other_exporter_baseline, speedup_table

from vitdeploy.backends import BuildConfig, ModelSource
from vitdeploy.hardware import cpu_name, device_slug
from vitdeploy.bench.harness import TimingPlan
from vitdeploy.bench.report import write_result
from vitdeploy.bench.run import bench_sources
from vitdeploy.cli._options import batch_list
from vitdeploy.io import write_bytes_atomic
from vitdeploy.models.spec import BlockSpec, ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.models.zoo import get_spec

RESULTS = Path(__file__).parent / "results"


def compacted_specs(base: ViTSpec) -> dict[str, ViTSpec]:
    result = json.loads((RESULTS / "nvit-fmnist.json").read_text())
    dims = {f"{run['criterion']}@{level['level']}": level["dims"] for run in result["criteria"] for level in run["levels"]}
    dims.update({f"2:4 on {row['model']}": row["dims"] for row in result["sparse_24"]})
    return {name: spec_with_dims(base, d) for name, d in dims.items()}


def spec_with_dims(base: ViTSpec, dims: dict) -> ViTSpec:
    blocks = [BlockSpec(**b, attn_scale=old.scale) for b, old in zip(dims["blocks"], base.blocks)]
    return dataclasses.replace(base, embed_dim=dims["embed_dim"], blocks=blocks).validate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="8,64")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--other-exporter-baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the unpruned model through torch's TorchScript exporter; speedups are "
                             "against the faster baseline (default: on)")
    args = parser.parse_args()
    base = get_spec("fmnist_vit")
    specs = {"baseline": base, **compacted_specs(base)}
    config = BuildConfig(batch_sizes=batch_list(args.batch), threads=2)
    with tempfile.TemporaryDirectory() as tmp:
        sources = {name: ModelSource(name.replace(" ", "_").replace(":", ""), tmp, model=seeded(spec))
                   for name, spec in specs.items()}
        if args.other_exporter_baseline:
            sources = {"baseline": sources.pop("baseline"), **other_exporter_baseline(seeded(base), tmp), **sources}
        result = bench_sources(sources, "onnxruntime", config, TimingPlan(warmup=20, iters=args.iters,
                                                                          rounds=args.rounds), progress=True)
    result.config["command"] = (f"python benchmarks/nvit_speed.py --batch {args.batch}"
                                + ("" if args.other_exporter_baseline else " --no-other-exporter-baseline"))
    stem = RESULTS / f"nvit-speed-fmnist_vit-{device_slug(cpu_name())}-onnxruntime"
    write_result(result, stem)
    summary = speedup_table(result.rows)
    write_bytes_atomic(stem.with_suffix(".summary.md"), (summary + "\n").encode())
    print(summary)


def seeded(spec: ViTSpec) -> ViT:
    model = ViT(spec)
    model.reset_parameters(0)
    return model.eval()


if __name__ == "__main__":
    main()
