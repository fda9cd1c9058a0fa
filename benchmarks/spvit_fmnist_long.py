"""SPViT with a longer schedule than benchmarks/spvit_fmnist.py: the main variant only, 6 epochs on
the first 30k train images (≈ 2,800 steps against 470), same validation, test split and settings,
next to class-attention top-k fine-tuned with the same long schedule (``cls-attn+ft-long``).

    .venv/bin/python benchmarks/spvit_fmnist_long.py

Checkpoints go to ``--work`` (default /tmp/vitdeploy-spvit-long), so an interrupted run resumes.
Writes benchmarks/results/spvit-fmnist-long.json (compare with spvit-fmnist.json's rows).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from spvit_fmnist import BASE, BUDGETS, RESULTS, VALIDATION, fine_tuned_row, log, spvit_row
from torch.utils.data import Subset

from vitdeploy.data import dataset_for
from vitdeploy.io import write_json_atomic
from vitdeploy.models.zoo import load_model

LONG = replace(BASE, epochs=6, limit=30000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitdeploy-spvit-long"))
    args = parser.parse_args()
    torch.set_num_threads(LONG.threads)
    model = load_model("fmnist_vit")
    train_full = dataset_for(model, "fashion-mnist", "train")
    validation, test_set = Subset(train_full, VALIDATION), dataset_for(model, "fashion-mnist", "test")
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for budget in BUDGETS:
            config = replace(LONG, budget_flops=budget)
            rows.append(spvit_row(model, "spvit-long", config, train_full, validation, test_set,
                                  args.work / f"spvit-{budget}", Path(tmp)))
            log(rows[-1])
            rows.append({**fine_tuned_row(model, rows[-1], train_full, test_set, budget, LONG),
                         "method": "cls-attn+ft-long"})
            log(rows[-1])
    write_json_atomic(RESULTS / "spvit-fmnist-long.json", {
        "model": "fmnist_vit", "budgets": list(BUDGETS), "spvit_settings": asdict(LONG),
        "validation_images": [VALIDATION.start, VALIDATION.stop], "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python " + shlex.join(["benchmarks/spvit_fmnist_long.py", *sys.argv[1:]])})


if __name__ == "__main__":
    main()
