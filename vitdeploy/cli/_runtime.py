"""The options of every command that runs models in torch: device, precision, and for training the
loader workers and the DeiT augmentations; and the session they open (see ``vitdeploy.runtime``)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from vitdeploy.cli._options import float_in, whole_number_in

AMP_CHOICES = ("bf16", "fp16", "off")
MAX_WORKERS = 256
AUGMENT_OPTIONS = {
    "randaugment_n": ("RandAugment operations per image (0 turns RandAugment off)", whole_number_in(0, 16)),
    "randaugment_m": ("RandAugment magnitude on the 0..10 scale", float_in(0, 10)),
    "randaugment_mstd": ("standard deviation of the per-operation magnitude noise", float_in(0, 10)),
    "reprob": ("random-erasing probability", float_in(0, 1)),
    "mixup": ("Mixup's Beta alpha (0 turns Mixup off)", float_in(0, 100)),
    "cutmix": ("CutMix's Beta alpha (0 turns CutMix off)", float_in(0, 100)),
    "smoothing": ("label smoothing of the soft targets", float_in(0, 1, high_open=True)),
}
TORCHRUN_NOTE = ("Runs unchanged under torchrun (e.g. torchrun --nproc-per-node 8 -m vitdeploy ...): --batch-size "
                 "is then the global batch, every process takes its share, and only the first process writes.")


def add_runtime_options(p: argparse.ArgumentParser, training: bool = True) -> None:
    """--device and --amp; with ``training``, --workers and the augmentation options too."""
    from vitdeploy.data.augment import AugmentConfig

    p.set_defaults(opens_runtime=True)
    g = p.add_argument_group("devices and processes", TORCHRUN_NOTE if training else None)
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else cpu); under "
                                    "torchrun each process takes the GPU of its local rank")
    g.add_argument("--amp", choices=AMP_CHOICES,
                   help="autocast precision (default: bf16 on CUDA, off on the CPU); fp16 adds loss scaling and "
                        "needs CUDA; importance and calibration sums stay fp32")
    if not training:
        return
    g.add_argument("--workers", type=whole_number_in(0, MAX_WORKERS),
                   help="loader processes per training process for image-folder data (default: one per free core, "
                        "at most 16; 0 loads in the training process)")
    a = p.add_argument_group("image-folder training augmentation (DeiT's defaults; Fashion-MNIST keeps its shifts "
                             "and flips)")
    a.add_argument("--no-augment", action="store_true",
                   help="train on the evaluation transform: no crop, flip, RandAugment, erasing or mixing")
    defaults = AugmentConfig()
    for name, (help_text, parse) in AUGMENT_OPTIONS.items():
        a.add_argument("--" + name.replace("_", "-"), dest=name, type=parse, default=getattr(defaults, name),
                       help=help_text + " (default: %(default)s)")


def pipeline_from(args):
    """The training data pipeline the options of ``add_runtime_options`` ask for."""
    from vitdeploy.data.augment import AugmentConfig
    from vitdeploy.data.pipeline import Pipeline

    augment = None if args.no_augment else AugmentConfig(**{k: getattr(args, k) for k in AUGMENT_OPTIONS}).validate()
    return Pipeline(augment, args.workers)


@contextlib.contextmanager
def runtime_session(args) -> Iterator[None]:
    """The command's runtime (for commands with ``add_runtime_options``), checked before the job is
    joined; a process other than the first of a torchrun job runs quietly, its stdout discarded."""
    if not getattr(args, "opens_runtime", False):
        yield
        return
    from vitdeploy.runtime import resolve, session

    runtime = resolve(args.device, args.amp)
    if getattr(args, "batch_size", None) is not None:
        runtime.require_divisible_batch(args.batch_size)
    with session(runtime):
        if runtime.main:
            yield
            return
        args.quiet = True
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
