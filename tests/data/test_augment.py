"""Tests for vitdeploy.data.augment: per-image DeiT augmentations, Mixup / CutMix plans, soft targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.data.jpeg_folder import class_dir_name, write_jpeg_folder
from vitdeploy.data.augment import (
    _RAND_AUGMENT_OPS,
    AugmentConfig,
    _crop_box,
    _sample_beta,
    _sample_log_gamma,
    apply_mix,
    plan_mix,
    random_erase,
    soft_target_loss,
    soft_targets,
    train_image,
)
from vitdeploy.data.fashion_mnist import DEFAULT_ROOT
from vitdeploy.errors import VitDeployError

HAVE_FASHION_MNIST = any((DEFAULT_ROOT / f"train-labels-idx1-ubyte{ext}").is_file() for ext in ("", ".gz"))
NO_AUGMENT = AugmentConfig.none()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise_image(mode: str, width: int = 40, height: int = 30, low: int = 0, high: int = 255) -> Image.Image:
    """Uniform noise in [low, high] per pixel (and channel)."""
    shape = (height, width) if mode == "L" else (height, width, 3)
    return Image.fromarray(np.random.default_rng(0).integers(low, high + 1, shape, dtype=np.uint8))


def as_tensor(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.array(image))
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)


# --- train_image ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_train_image_shape_dtype_and_determinism(mode, channels):
    image, config = noise_image(mode), AugmentConfig()
    first = train_image(image, 24, config, gen(1))
    assert first.shape == (channels, 24, 24) and first.dtype == torch.uint8
    assert torch.equal(first, train_image(image, 24, config, gen(1)))
    assert not torch.equal(first, train_image(image, 24, config, gen(2)))


def test_train_image_refuses_other_modes():
    with pytest.raises(VitDeployError, match="RGBA"):
        train_image(Image.new("RGBA", (8, 8)), 8, AugmentConfig(), gen(0))


def test_full_crop_of_a_square_image_is_a_plain_resize():
    image = noise_image("RGB", 40, 40)
    config = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, randaugment_n=0)
    expected = as_tensor(image.resize((24, 24), Image.Resampling.BILINEAR))
    assert torch.equal(train_image(image, 24, config, gen(3)), expected)


def test_no_augmentation_resizes_the_centred_square():
    image = noise_image("L", 40, 30)
    expected = as_tensor(image.crop((5, 0, 35, 30)).resize((16, 16), Image.Resampling.BILINEAR))
    assert torch.equal(train_image(image, 16, NO_AUGMENT, gen(0)), expected)


def test_hflip_probability_one_flips():
    image = noise_image("RGB")
    for seed in range(5):
        flipped = train_image(image, 24, AugmentConfig(hflip=1.0, randaugment_n=0), gen(seed))
        plain = train_image(image, 24, AugmentConfig(hflip=0.0, randaugment_n=0), gen(seed))
        assert torch.equal(flipped, plain.flip(-1))


def test_crop_boxes_respect_scale_ratio_and_image():
    config = AugmentConfig()
    width, height = 40, 30
    for seed in range(50):
        top, left, crop_h, crop_w = _crop_box(width, height, config, gen(seed))
        assert 0 <= top <= height - crop_h and 0 <= left <= width - crop_w
        # The drawn sides are rounded, so the area and aspect hold up to half a pixel per side.
        assert (crop_h - 0.5) * (crop_w - 0.5) <= config.scale[1] * width * height
        assert (crop_h + 0.5) * (crop_w + 0.5) >= config.scale[0] * width * height
        assert (crop_w - 0.5) / (crop_h + 0.5) <= config.ratio[1]
        assert (crop_w + 0.5) / (crop_h - 0.5) >= config.ratio[0]


def test_rand_augment_changes_images_and_n_zero_is_identity():
    image = noise_image("RGB", 40, 40)
    full = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    plain = as_tensor(image.resize((32, 32), Image.Resampling.BILINEAR))
    changed = 0
    for seed in range(20):
        assert torch.equal(train_image(image, 32, AugmentConfig(**full, randaugment_n=0), gen(seed)), plain)
        changed += not torch.equal(train_image(image, 32, AugmentConfig(**full), gen(seed)), plain)
    # Both of the two ops are skipped with probability 1/4, so most seeds change the image.
    assert changed >= 10


@pytest.mark.parametrize("op", _RAND_AUGMENT_OPS)
def test_every_rand_augment_op_changes_a_noise_image(op):
    # Not the full range, which auto-contrast keeps; still above 230 (solarize) and below 128 (solarize-add).
    image = noise_image("RGB", 32, 32, low=20, high=250)
    out = op(image, 9.0, gen(0))
    assert out.size == image.size and out.mode == image.mode
    assert not torch.equal(as_tensor(out), as_tensor(image))


# --- random_erase -----------------------------------------------------------------------------


def test_random_erase_probability_zero_never_erases():
    x = torch.randn(3, 32, 32)
    for seed in range(10):
        out = random_erase(x, AugmentConfig(reprob=0.0), gen(seed))
        assert torch.equal(out, x) and out is not x


def test_random_erase_probability_one_erases_one_box_in_bounds():
    x = torch.zeros(3, 32, 32)
    area = 32 * 32
    for seed in range(20):
        out = random_erase(x, AugmentConfig(reprob=1.0), gen(seed))
        assert torch.equal(x, torch.zeros_like(x))
        erased = out != 0
        assert torch.equal(erased, erased[:1].expand_as(erased))  # every channel, same pixels
        rows, cols = erased[0].any(1).nonzero(), erased[0].any(0).nonzero()
        box_h, box_w = len(rows), len(cols)
        assert int(erased[0].sum()) == box_h * box_w > 0  # a filled rectangle
        assert box_h < 32 and box_w < 32
        # Sides are rounded from sqrt(area * aspect) and sqrt(area / aspect), area in [0.02, 1/3].
        assert (box_h + 0.5) * (box_w + 0.5) >= 0.02 * area
        assert (box_h - 0.5) * (box_w - 0.5) <= area / 3
        assert 0.3 - 1e-9 <= (box_h + 0.5) / (box_w - 0.5) and (box_h - 0.5) / (box_w + 0.5) <= 1 / 0.3 + 1e-9


def test_random_erase_is_deterministic_per_seed():
    x = torch.randn(3, 16, 16)
    config = AugmentConfig(reprob=1.0)
    assert torch.equal(random_erase(x, config, gen(4)), random_erase(x, config, gen(4)))
    assert not torch.equal(random_erase(x, config, gen(4)), random_erase(x, config, gen(5)))


# --- Mixup / CutMix ---------------------------------------------------------------------------


def batch(n: int, size: int = 8, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 3, size, size, generator=gen(100))
    return x, soft_targets(torch.arange(n) % classes, classes, 0.1)


@pytest.mark.parametrize("n, cuts", [(10, [0, 4, 8, 10]), (9, [0, 2, 8, 9]), (9, [0, 9])])
def test_mixing_slices_equals_the_rows_of_the_whole_batch(n, cuts):
    x, targets = batch(n)
    plan = plan_mix(n, 8, AugmentConfig(mix_prob=0.7), gen(0))
    whole_x, whole_t = apply_mix(x, targets, plan, 0)
    parts = [apply_mix(x[a:b], targets[a:b], plan, a) for a, b in zip(cuts, cuts[1:])]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_t)
    if n % 2:
        assert torch.equal(whole_x[-1], x[-1]) and torch.equal(whole_t[-1], targets[-1])


def test_plan_is_deterministic_per_seed():
    config = AugmentConfig()
    a, b, c = (plan_mix(16, 8, config, gen(seed)) for seed in (1, 1, 2))
    assert torch.equal(a.lam, b.lam) and torch.equal(a.cutmix, b.cutmix) and torch.equal(a.box, b.box)
    assert not torch.equal(a.lam, c.lam)


def test_mixed_targets_are_the_lambda_blend_of_the_pair():
    x, targets = batch(12)
    plan = plan_mix(12, 8, AugmentConfig(), gen(1))
    _, mixed = apply_mix(x, targets, plan, 0)
    torch.testing.assert_close(mixed.sum(1), torch.ones(12))
    for k, lam in enumerate(plan.lam.float()):
        a, b = targets[2 * k], targets[2 * k + 1]
        torch.testing.assert_close(mixed[2 * k], lam * a + (1 - lam) * b)
        torch.testing.assert_close(mixed[2 * k + 1], lam * b + (1 - lam) * a)


def test_mixup_blends_the_pair_images():
    x, targets = batch(12)
    plan = plan_mix(12, 8, AugmentConfig(cutmix=0.0), gen(2))
    assert not plan.cutmix.any() and (plan.lam < 1).all()
    mixed, _ = apply_mix(x, targets, plan, 0)
    for k, lam in enumerate(plan.lam.float()):
        torch.testing.assert_close(mixed[2 * k], lam * x[2 * k] + (1 - lam) * x[2 * k + 1])
        torch.testing.assert_close(mixed[2 * k + 1], lam * x[2 * k + 1] + (1 - lam) * x[2 * k])


def test_cutmix_lambda_is_the_share_of_own_pixels():
    n, size = 40, 16
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    plan = plan_mix(n, size, AugmentConfig(mixup=0.0), gen(3))
    assert plan.cutmix.all()
    mixed, _ = apply_mix(x, soft_targets(torch.zeros(n, dtype=torch.long), 2, 0.0), plan, 0)
    for k in range(n // 2):
        y0, y1, x0, x1 = plan.box[k].tolist()
        assert 0 <= y0 <= y1 <= size and 0 <= x0 <= x1 <= size
        for own, other in ((2 * k, 2 * k + 1), (2 * k + 1, 2 * k)):
            from_other = mixed[own] == other
            assert torch.equal(from_other | (mixed[own] == own), torch.ones_like(from_other))
            assert int(from_other[0].sum()) == (y1 - y0) * (x1 - x0)
            assert plan.lam[k].item() == pytest.approx(1 - (y1 - y0) * (x1 - x0) / size**2)


@pytest.mark.parametrize("config", [AugmentConfig(mix_prob=0.0), AugmentConfig(mixup=0.0, cutmix=0.0), NO_AUGMENT])
def test_nothing_is_mixed_when_mixing_is_off(config):
    x, targets = batch(6)
    plan = plan_mix(6, 8, config, gen(0))
    assert torch.equal(plan.lam, torch.ones(3, dtype=torch.float64)) and not plan.cutmix.any()
    mixed_x, mixed_t = apply_mix(x, targets, plan, 0)
    assert torch.equal(mixed_x, x) and torch.equal(mixed_t, targets)


def test_apply_mix_refuses_slices_that_split_pairs():
    x, targets = batch(10)
    plan = plan_mix(8, 8, AugmentConfig(), gen(0))
    for start, stop in ((1, 3), (0, 3), (6, 9)):  # odd start, half a pair, past the plan's 8 images
        with pytest.raises(ValueError):
            apply_mix(x[start:stop], targets[start:stop], plan, start)


@pytest.mark.parametrize("alpha", [0.2, 0.8, 1.0, 5.0])
def test_beta_draws_have_the_beta_mean_and_variance(alpha):
    draws = _sample_beta(alpha, 20_000, gen(7))
    assert ((draws >= 0) & (draws <= 1)).all()
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); 20k draws estimate both to about 1%.
    assert draws.mean().item() == pytest.approx(0.5, abs=0.01)
    assert draws.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


@pytest.mark.parametrize("shape", [0.3, 1.0, 4.0])
def test_gamma_draws_have_the_gamma_mean_and_variance(shape):
    draws = _sample_log_gamma(shape, 200_000, gen(8)).exp()
    # Gamma(k, 1): mean k and variance k; 200k draws estimate the mean to well under 1%.
    assert draws.mean().item() == pytest.approx(shape, rel=0.01)
    assert draws.var().item() == pytest.approx(shape, rel=0.03)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_apply_mix_on_cuda_matches_cpu():
    x, targets = batch(8)
    plan = plan_mix(8, 8, AugmentConfig(), gen(0))
    cpu_x, cpu_t = apply_mix(x, targets, plan, 0)
    cuda_x, cuda_t = apply_mix(x.cuda(), targets.cuda(), plan, 0)
    torch.testing.assert_close(cuda_x.cpu(), cpu_x)
    torch.testing.assert_close(cuda_t.cpu(), cpu_t)


# --- targets and loss -------------------------------------------------------------------------


def test_soft_targets_on_and_off_values():
    labels = torch.tensor([0, 3, 1, 3])
    targets = soft_targets(labels, 4, 0.2)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    off, on = 0.2 / 4, 1 - 0.2 + 0.2 / 4
    expected = torch.full((4, 4), off)
    expected[torch.arange(4), labels] = on
    torch.testing.assert_close(targets, expected)
    assert torch.equal(soft_targets(labels, 4, 0.0), F.one_hot(labels, 4).float())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_target_loss_matches_label_smoothed_cross_entropy(smoothing):
    logits = torch.randn(6, 5, generator=gen(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    expected = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    torch.testing.assert_close(soft_target_loss(logits, soft_targets(labels, 5, smoothing)), expected)


# --- AugmentConfig.validate -------------------------------------------------------------------


def test_defaults_and_none_are_valid():
    assert AugmentConfig().validate() == AugmentConfig()
    assert AugmentConfig.none().validate().randaugment_n == 0


@pytest.mark.parametrize("field, value, flag", [
    ("reprob", math.nan, "--reprob"),
    ("reprob", 1.5, "--reprob"),
    ("hflip", -0.1, "--hflip"),
    ("mix_prob", 2.0, "--mix-prob"),
    ("switch_prob", math.nan, "--switch-prob"),
    ("smoothing", -0.1, "--smoothing"),
    ("mixup", -1.0, "--mixup"),
    ("cutmix", math.nan, "--cutmix"),
    ("cutmix", math.inf, "--cutmix"),
    ("randaugment_mstd", -0.5, "--randaugment-mstd"),
    ("randaugment_m", 11.0, "--randaugment-m"),
    ("randaugment_m", math.nan, "--randaugment-m"),
    ("randaugment_n", -1, "--randaugment-n"),
    ("randaugment_n", 1.5, "--randaugment-n"),
    ("scale", (0.0, 1.0), "--scale"),
    ("scale", (0.5, 0.2), "--scale"),
    ("scale", (0.1, math.nan), "--scale"),
    ("scale", (0.1, 1.5), "--scale"),
    ("ratio", (-1.0, 1.0), "--ratio"),
    ("ratio", (1.0, math.inf), "--ratio"),
    ("ratio", (math.nan, 1.0), "--ratio"),
])
def test_validate_names_the_flag(field, value, flag):
    with pytest.raises(VitDeployError, match=f"^{flag} must be ") as info:
        AugmentConfig(**{field: value}).validate()
    assert "\n" not in str(info.value)


# --- the JPEG folder helper -------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("rgb, mode", [(True, "RGB"), (False, "L")])
def test_write_jpeg_folder_writes_decodable_class_folders(tmp_path, rgb, mode):
    root = write_jpeg_folder(tmp_path / "folder", per_class=2, classes=3, size=32, rgb=rgb)
    assert root == tmp_path / "folder"
    for split in ("train", "val"):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == [class_dir_name(label) for label in range(3)]
        for folder in folders:
            assert sorted(p.name for p in (root / split / folder).iterdir()) == ["0.jpg", "1.jpg"]
    with Image.open(root / "train" / class_dir_name(0) / "0.jpg") as image:
        assert image.format == "JPEG" and image.mode == mode and image.size == (32, 32)
        assert train_image(image.convert(mode), 16, AugmentConfig(), gen(0)).shape == (len(mode), 16, 16)
    train = (root / "train" / class_dir_name(1) / "0.jpg").read_bytes()
    assert train != (root / "val" / class_dir_name(1) / "0.jpg").read_bytes()
