"""`vitdeploy train`: train a registered architecture from scratch (or fine-tune with --init)."""

from __future__ import annotations

from vitdeploy.cli._options import batch_size, float_in, non_empty, positive_int, threads_count, whole_number_in
from vitdeploy.cli._runtime import add_runtime_options, pipeline_from
from vitdeploy.errors import VitDeployError


def register(sub) -> None:
    from vitdeploy.train.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a ViT from scratch (default: the Fashion-MNIST reference model)",
                       description="Train a registered architecture from scratch and save it as a vitdeploy model "
                                   "directory, with train.json (config and per-epoch accuracy) beside it.")
    p.add_argument("--model", default=d.model, help="registered architecture (default: %(default)s)")
    p.add_argument("--data", type=non_empty, default=d.data,
                   help="fashion-mnist or an ImageFolder directory (default: %(default)s)")
    p.add_argument("--out", type=non_empty, required=True, help="output model directory")
    p.add_argument("--epochs", type=whole_number_in(1, 100_000), default=d.epochs, help="default: %(default)s")
    p.add_argument("--batch-size", type=batch_size, default=d.batch_size, help="default: %(default)s")
    p.add_argument("--lr", type=float_in(0, 10, low_open=True), default=d.lr,
                   help="peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float_in(0, 1, high_open=True), default=d.label_smoothing,
                   help="in [0, 1), for Fashion-MNIST's labels (image folders: --smoothing) (default: %(default)s)")
    p.add_argument("--crop-padding", type=whole_number_in(0, 1024), default=d.crop_padding,
                   help="random-shift augmentation in pixels, 0 = off; flips are always on (default: %(default)s)")
    p.add_argument("--seed", type=whole_number_in(0, 2**32 - 1), default=d.seed, help="default: %(default)s")
    p.add_argument("--threads", type=threads_count, default=d.threads, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, help="use only the first N images of each split (quick runs)")
    p.add_argument("--init", type=non_empty, metavar="MODEL_DIR",
                   help="start from this model directory's weights (fine-tuning) instead of a random init")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    add_runtime_options(p)
    p.set_defaults(run=_run_train)


def _run_train(args) -> None:
    from vitdeploy.io import check_output_dir
    from vitdeploy.models.checkpoint import ARTIFACT_FILES, load_artifact, save_artifact
    from vitdeploy.models.vit import ViT
    from vitdeploy.models.zoo import get_spec
    from vitdeploy.schema import flag_name, validated
    from vitdeploy.train.config import TrainConfig
    from vitdeploy.train.loop import train

    config = validated(TrainConfig(model=args.model, data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                                   lr=args.lr, label_smoothing=args.label_smoothing, crop_padding=args.crop_padding,
                                   seed=args.seed, threads=args.threads, limit=args.limit, init=args.init), flag_name)
    check_output_dir(args.out, ARTIFACT_FILES)
    if args.init:
        model = load_artifact(args.init)
        if model.spec != get_spec(args.model):
            raise VitDeployError(f"--init {args.init} is not a {args.model} model; pass --model with its architecture")
    else:
        model = ViT(get_spec(args.model))
        model.reset_parameters(args.seed)
    report = train(model, config, progress=not args.quiet, pipeline=pipeline_from(args))
    report["command"] = config.command(args.out)
    save_artifact(model, args.out, reports={"train.json": report})
    print(f"saved {args.out}: test top-1 {report['test_top1']:.4f} after {config.epochs} epochs "
          f"({report['train_seconds']:.0f} s)")
