"""Training throughput: a distilled DeiT-S fine-tune step through vitdeploy's training engine, with
DeiT's full augmentation, next to a plain training loop on the same model, batch and precision.

    .venv/bin/python benchmarks/train_throughput.py --device cpu --processes 1,2
    python3 benchmarks/train_throughput.py --device cuda --batch 256 --steps 30 --warmup 10
    .venv/bin/python benchmarks/train_throughput.py --smoke --device cpu --processes 1,2 --out DIR

The engine: ``--images`` synthetic JPEGs (500×375 RGB, about 90 KB each; ImageNet's average is
about 110 KB) in an ImageFolder, decoded and augmented in the loader workers (random-resized crop,
flip, RandAugment m9 mstd0.5, random erasing 0.25), Mixup/CutMix with smoothed soft targets per
global batch, and ``Trainer.step`` on ``training_loss``: soft-target cross-entropy plus the KL
distillation term of a teacher (a second model of the same architecture; both have seeded random
weights). The folder lists the JPEGs again and again (hard links) until the run fits in one epoch,
as the steps of an ImageNet epoch do. Each ``--processes`` count runs under
``torchrun --nproc-per-node N`` with cores ÷ N torch threads per process, so every row gets the
same cores.

Per row: global images/s over the timed steps, the median seconds per step (waiting for data
included), and the share of that time the step loop spent blocked on the next batch. The first
timed steps can still take batches the loader prefetched during the warm-up.

The anchor: a plain loop (forward under autocast, the teacher's forward under no_grad, backward,
AdamW step) on one batch already on the device, in one process with all the cores: timm's model
on CUDA when timm imports and knows ``--model``, else vitdeploy's ViT. ratio = engine images/s ÷
anchor images/s.

Writes OUT/train-throughput-<device>.json and .md (``--out``, default benchmarks/results); the
progress goes to stderr, the JSON file's path to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitdeploy import runtime
from vitdeploy.bench.report import environment_line
from vitdeploy.cli._options import int_list, whole_number_in
from vitdeploy.data import dataset_for
from vitdeploy.data.augment import AugmentConfig, soft_targets
from vitdeploy.data.loader import EpochBatches, batch_augment_for, default_workers
from vitdeploy.data.pipeline import Pipeline
from vitdeploy.errors import VitDeployError
from vitdeploy.hardware import cpu_count, device_name, device_slug, environment
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.models.spec import ViTSpec
from vitdeploy.models.vit import ViT
from vitdeploy.models.zoo import get_spec
from vitdeploy.tables import format_table
from vitdeploy.threads import torch_threads
from vitdeploy.train.config import TrainConfig
from vitdeploy.train.loop import training_loss
from vitdeploy.train.trainer import Schedule, Trainer, param_groups

RESULTS = Path(__file__).parent / "results"
SEED = 0
TEACHER_SEED = 1
JPEG_SIZE = (500, 375)
JPEG_DETAIL = (50, 38)
"""Random pixels upsampled to ``JPEG_SIZE``, plus noise: about as costly to decode as a photo."""
JPEG_NOISE = 12.0
MAX_CLASSES = 10
GOAL_RATIO = 0.95
GOAL_DATA_WAIT = 0.05
DEFAULTS = {"model": "deit_small_patch16_224", "batch": 64, "steps": 10, "warmup": 3, "images": 256,
            "workers": None}
SMOKE_DEFAULTS = {"model": "fmnist_vit", "batch": 8, "steps": 2, "warmup": 1, "images": 8, "workers": 1}


@dataclass(frozen=True)
class ThroughputPlan:
    batch: int
    """The global batch."""
    steps: int
    warmup: int
    workers: int | None = None
    """Loader workers per process (None: the engine's default)."""
    images: int = 256
    """Distinct JPEGs generated."""


# --- data ------------------------------------------------------------------------------------------

def write_training_folder(root: Path, plan: ThroughputPlan, num_classes: int) -> Path:
    """``plan.images`` synthetic JPEGs under ``root``, listed in ``root/train/<class>/`` as many times
    as one epoch of the plan's steps needs; returns ``root``."""
    originals = root / "originals"
    originals.mkdir(parents=True)
    files = [originals / f"{i:05d}.jpg" for i in range(plan.images)]
    for seed, path in enumerate(files):
        synthetic_photo(np.random.default_rng(seed)).save(path, quality=90)
    classes = min(num_classes, MAX_CLASSES)
    for i in range(max(plan.images, (plan.warmup + plan.steps) * plan.batch)):
        folder = root / "train" / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(files[i % len(files)], folder / f"{i:06d}.jpg")
    return root


def synthetic_photo(rng: np.random.Generator) -> Image.Image:
    detail = Image.fromarray(rng.integers(0, 256, (*JPEG_DETAIL[::-1], 3), dtype=np.uint8))
    pixels = np.asarray(detail.resize(JPEG_SIZE, Image.Resampling.BICUBIC), dtype=np.float32)
    pixels += rng.normal(0.0, JPEG_NOISE, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# --- measurements ----------------------------------------------------------------------------------

def measure_engine(spec: ViTSpec, folder: Path, plan: ThroughputPlan) -> dict:
    """The engine's distilled, augmented training step on ``folder`` in the current runtime: this
    process's figures (global images/s, median s per step, share of the time waiting for data)."""
    rt = runtime.current()
    student, teacher = seeded_model(spec, SEED), seeded_model(spec, TEACHER_SEED).eval()
    dataset = dataset_for(student, str(folder), "train", pipeline=Pipeline(AugmentConfig(), plan.workers))
    config = TrainConfig()
    groups = [{**group, "lr": config.lr} for group in param_groups(student, config.weight_decay)]
    trainer = Trainer(student, groups, Schedule(plan.warmup + plan.steps), SEED,
                      batch_augment_for(dataset, spec.num_classes, config.crop_padding), companions=(teacher,))
    batches = EpochBatches(dataset, plan.batch, SEED).endless()

    def loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return training_loss(student, x, y, config, teacher), {}

    waits, durations = [], []
    for step in range(plan.warmup + plan.steps):
        started = time.perf_counter()
        x, y = next(batches)
        fetched = time.perf_counter()
        trainer.step(step, x, y, loss)  # returns the loss as a number: the device has finished the step
        if step >= plan.warmup:
            waits.append(fetched - started)
            durations.append(time.perf_counter() - started)
    trainer.release()
    seconds = sum(durations)
    return {"processes": rt.world_size, "threads": torch.get_num_threads(),
            "workers": default_workers() if plan.workers is None else plan.workers, "batch": plan.batch,
            "images_per_s": plan.batch * plan.steps / seconds, "s_per_step": statistics.median(durations),
            "data_wait_fraction": sum(waits) / seconds}


def measure_anchor(spec: ViTSpec, plan: ThroughputPlan, rt: runtime.Runtime) -> dict:
    """A plain distilled training loop (autocast, AdamW, no loader) on one batch resident on ``rt``'s device."""
    student, teacher, implementation = anchor_models(spec, rt.device)
    student.to(rt.torch_device).train()
    teacher.to(rt.torch_device).eval()
    config = TrainConfig()
    optimizer = torch.optim.AdamW(param_groups(student, config.weight_decay), lr=config.lr)
    scaler = rt.grad_scaler()
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(plan.batch, spec.in_chans, spec.img_size, spec.img_size, generator=generator).to(rt.torch_device)
    labels = torch.randint(spec.num_classes, (plan.batch,), generator=generator)
    y = soft_targets(labels, spec.num_classes, AugmentConfig().smoothing).to(rt.torch_device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with rt.autocast():
            loss = training_loss(student, x, y, config, teacher)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(plan.warmup):
        step()
    synchronize(rt)
    started = time.perf_counter()
    for _ in range(plan.steps):
        step()
    synchronize(rt)
    seconds = time.perf_counter() - started
    return {"implementation": implementation, "threads": torch.get_num_threads(), "batch": plan.batch,
            "images_per_s": plan.batch * plan.steps / seconds, "s_per_step": seconds / plan.steps}


def anchor_models(spec: ViTSpec, device: str) -> tuple[nn.Module, nn.Module, str]:
    """Student, teacher and their implementation: timm's DeiT on CUDA where timm has ``spec.name``."""
    if torch.device(device).type == "cuda":
        try:
            import timm
        except ImportError:
            timm = None
        if timm is not None and timm.is_model(spec.name):
            torch.manual_seed(SEED)
            return (timm.create_model(spec.name, num_classes=spec.num_classes),
                    timm.create_model(spec.name, num_classes=spec.num_classes), "timm")
    return seeded_model(spec, SEED), seeded_model(spec, TEACHER_SEED), "vitdeploy"


def seeded_model(spec: ViTSpec, seed: int) -> ViT:
    model = ViT(spec)
    model.reset_parameters(seed)
    return model


def synchronize(rt: runtime.Runtime) -> None:
    if rt.torch_device.type == "cuda":
        torch.cuda.synchronize(rt.torch_device)


def with_anchor(row: dict, anchor: dict) -> dict:
    return {**row, "anchor_images_per_s": anchor["images_per_s"],
            "anchor_ratio": row["images_per_s"] / anchor["images_per_s"]}


def goals_met(row: dict) -> dict[str, bool]:
    """Whether a row reaches GOAL_RATIO of the anchor and waits for data less than GOAL_DATA_WAIT of the time."""
    return {"anchor_ratio": row["anchor_ratio"] >= GOAL_RATIO, "data_wait": row["data_wait_fraction"] < GOAL_DATA_WAIT}


def throughput_table(rows: list[dict]) -> str:
    return format_table(
        ["processes", "torch threads", "loader workers", "batch", "img/s", "s per step", "data wait", "anchor img/s",
         "ratio"],
        [[r["processes"], r["threads"], r["workers"], r["batch"], f"{r['images_per_s']:.1f}", f"{r['s_per_step']:.3f}",
          f"{r['data_wait_fraction']:.1%}", f"{r['anchor_images_per_s']:.1f}", f"{r['anchor_ratio']:.2f}×"]
         for r in rows])


# --- command line ----------------------------------------------------------------------------------

def launch_measurement(args: argparse.Namespace, folder: Path, processes: int, device_type: str, amp: str) -> dict:
    """``measure_engine`` under ``torchrun --nproc-per-node processes`` (cores ÷ processes torch
    threads each): rank 0's row."""
    threads = max(1, cpu_count() // processes)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               __file__, "--measure-folder", str(folder), "--threads", str(threads), "--device", device_type,
               "--amp", amp, "--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), *(["--workers", str(args.workers)] if args.workers is not None else [])]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if completed.returncode != 0:
        raise VitDeployError(f"the {processes}-process measurement failed (exit status {completed.returncode}); "
                             "its errors are above")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_in_job(args: argparse.Namespace) -> None:
    """The measurement sub-mode, one process of a torchrun job: rank 0 prints its row as JSON."""
    plan = ThroughputPlan(args.batch, args.steps, args.warmup, args.workers)
    with torch_threads(args.threads), runtime.session(runtime.resolve(args.device, args.amp)) as rt:
        row = measure_engine(get_spec(args.model), args.measure_folder, plan)
    if rt.main:
        print(json.dumps(row))


def run(args: argparse.Namespace) -> dict:
    rt = runtime.resolve(args.device, args.amp)
    device_type = rt.torch_device.type
    spec = get_spec(args.model)
    plan = ThroughputPlan(args.batch, args.steps, args.warmup, args.workers, args.images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as work:
        progress(f"writing {plan.images} JPEGs of {JPEG_SIZE[0]}×{JPEG_SIZE[1]}")
        folder = write_training_folder(Path(work), plan, spec.num_classes)
        for processes in args.processes:
            progress(f"{spec.name}: {processes} process(es) under torchrun")
            rows.append(launch_measurement(args, folder, processes, device_type, rt.amp))
    progress(f"{spec.name}: the anchor (a plain loop, one process, {cpu_count()} threads)")
    with torch_threads(cpu_count()):
        anchor = measure_anchor(spec, plan, rt)
    return {"model": spec.name, "device": device_name(device_type), "amp": rt.amp, "plan": asdict(plan),
            "augment": asdict(AugmentConfig()), "jpeg_size": list(JPEG_SIZE), "anchor": anchor,
            "rows": [with_anchor(row, anchor) for row in rows],
            "cores": f"Every row uses the {cpu_count()} cores of this machine: processes × torch threads = "
                     f"{cpu_count()} (loader workers come on top); the anchor is one process with {cpu_count()} "
                     "threads.",
            "environment": environment(cpu_count()),
            "command": shlex.join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]])}


def markdown(result: dict) -> str:
    plan, anchor = result["plan"], result["anchor"]
    return "\n\n".join([
        f"# Training throughput: {result['model']}, distilled fine-tune step, autocast {result['amp']}, "
        f"on {result['device']}",
        environment_line(result["environment"]),
        f"Global batch {plan['batch']}, {plan['steps']} timed steps after a warm-up of {plan['warmup']}, "
        f"{plan['images']} distinct {result['jpeg_size'][0]}×{result['jpeg_size'][1]} JPEGs with DeiT's augmentation "
        "(random-resized crop, flip, RandAugment, erasing, Mixup/CutMix) and a teacher of the same architecture. "
        "data wait = share of the time blocked on the next batch; ratio = img/s ÷ the anchor's.",
        throughput_table(result["rows"]),
        f"Anchor: a plain loop on a batch already on the device ({anchor['implementation']} model, "
        f"{anchor['threads']} threads). {result['cores']}",
        f"Command: `{result['command']}`",
    ]) + "\n"


def progress(message: str) -> None:
    print(f"[train-throughput] {message}", file=sys.stderr, flush=True)


def process_counts(text: str) -> tuple[int, ...]:
    counts = int_list(text)
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every process count must be at least 1")
    return counts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="cpu, cuda (default: cuda when torch sees a GPU, else cpu)")
    parser.add_argument("--amp", choices=runtime.AMP_CHOICES, help="default: bf16 on CUDA, off on the CPU")
    parser.add_argument("--model", help=f"registered model (default: {DEFAULTS['model']}; "
                                        f"{SMOKE_DEFAULTS['model']} with --smoke)")
    parser.add_argument("--batch", type=whole_number_in(1), help=f"global batch (default: {DEFAULTS['batch']})")
    parser.add_argument("--steps", type=whole_number_in(1), help=f"timed steps (default: {DEFAULTS['steps']})")
    parser.add_argument("--warmup", type=whole_number_in(0),
                        help=f"untimed steps before them (default: {DEFAULTS['warmup']})")
    parser.add_argument("--workers", type=whole_number_in(0), help="loader workers per process (default: the engine's)")
    parser.add_argument("--images", type=whole_number_in(1),
                        help=f"distinct JPEGs to generate (default: {DEFAULTS['images']})")
    parser.add_argument("--processes", type=process_counts, default=(1,),
                        help="torchrun process counts, e.g. 1,2 (default: 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, batch, folder and run (for tests)")
    parser.add_argument("--measure-folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=whole_number_in(1), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, default in (SMOKE_DEFAULTS if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.measure_folder is not None:
            measure_in_job(args)
            return 0
        result = run(args)
    except VitDeployError as exc:
        print(f"vitdeploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    stem = args.out / f"train-throughput-{device_slug(result['device'])}"
    write_json_atomic(stem.with_suffix(".json"), result)
    write_bytes_atomic(stem.with_suffix(".md"), markdown(result).encode())
    print(markdown(result), file=sys.stderr)
    print(stem.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
