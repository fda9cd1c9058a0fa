"""DeiT's fine-tuning augmentations, with every random choice drawn from an explicit ``torch.Generator``.

Per sample: random-resized crop, horizontal flip, RandAugment (timm's ``rand-m9-mstd0.5``) and,
after normalization, random erasing (timm's "pixel" mode). Per global batch: Mixup / CutMix
on pairs (2k, 2k+1) and label-smoothed soft targets. The caller seeds one generator per sample
from (seed, epoch, sample index) and one per global batch for mixing, so N processes see the
same augmented images as one.

Libraries: the image ops are Pillow's (``Image.crop`` and ``resize``, ``ImageOps``,
``ImageEnhance``, affine ``transform``), the calls torchvision and timm make, with timm's
levels; the random draws and the tensor work (erasing, mixing, losses) are torch.
torchvision and timm cannot be installed here. kornia 0.9 was tried and not used: its
RandAugment has other semantics (magnitude on a 0..30 scale without per-op noise, ops drawn
without replacement and always applied, n >= 1, smaller translations) and took about 7 ms per
224x224 image on one CPU core, while these Pillow ops take about 1 ms (all of
``train_image`` about 3 ms).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from vitdeploy.errors import VitDeployError

_RAND_AUGMENT_PROB = 0.5  # timm applies each chosen op with this probability
_MAX_LEVEL = 10.0  # timm's magnitude scale
_AFFINE_RESAMPLE = Image.Resampling.BICUBIC  # DeiT's train interpolation for RandAugment's geometric ops
_FILL = 128  # timm's fill for pixels uncovered by rotate / shear / translate
_ERASE_AREA = (0.02, 1 / 3)
_ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
_CROP_TRIES = 10


@dataclass(frozen=True)
class AugmentConfig:
    """DeiT's training augmentation settings; ``validate`` names a bad one by its CLI flag."""

    scale: tuple[float, float] = (0.08, 1.0)
    """Random-resized crop: range of the crop's area as a fraction of the image's."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Random-resized crop: range of the crop's width / height (sampled log-uniformly)."""
    hflip: float = 0.5
    """Probability of a horizontal flip."""
    randaugment_n: int = 2
    """Number of RandAugment ops drawn per image (with replacement); 0 turns RandAugment off."""
    randaugment_m: float = 9.0
    """RandAugment magnitude on timm's 0..10 scale."""
    randaugment_mstd: float = 0.5
    """Standard deviation of the Gaussian noise added to the magnitude for each op."""
    reprob: float = 0.25
    """Probability of random erasing (per-pixel normal noise on the normalized image)."""
    mixup: float = 0.8
    """Mixup's Beta(alpha, alpha) parameter; 0 disables Mixup."""
    cutmix: float = 1.0
    """CutMix's Beta(alpha, alpha) parameter; 0 disables CutMix."""
    mix_prob: float = 1.0
    """Probability that a pair of images is mixed at all."""
    switch_prob: float = 0.5
    """Probability of CutMix rather than Mixup for a mixed pair when both are enabled."""
    smoothing: float = 0.1
    """Label smoothing of the soft targets."""

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation: a centred square crop resized to the model's size, one-hot targets."""
        return cls(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, randaugment_n=0, reprob=0.0,
                   mixup=0.0, cutmix=0.0, smoothing=0.0)

    def validate(self) -> AugmentConfig:
        """Return self, or raise ``VitDeployError`` naming the first out-of-range setting's flag."""
        probabilities = {"--hflip": self.hflip, "--reprob": self.reprob, "--mix-prob": self.mix_prob,
                         "--switch-prob": self.switch_prob, "--smoothing": self.smoothing}
        for flag, value in probabilities.items():
            _require(0 <= value <= 1, flag, "a probability in [0, 1]", value)
        for flag, value in {"--mixup": self.mixup, "--cutmix": self.cutmix,
                            "--randaugment-mstd": self.randaugment_mstd}.items():
            _require(0 <= value < math.inf, flag, "a finite number >= 0", value)
        _require(_is_range(self.scale, upper=1.0), "--scale", "two numbers with 0 < min <= max <= 1", self.scale)
        _require(_is_range(self.ratio, upper=sys.float_info.max), "--ratio", "two finite numbers with 0 < min <= max",
                 self.ratio)
        n = self.randaugment_n
        _require(isinstance(n, int) and not isinstance(n, bool) and n >= 0, "--randaugment-n",
                 "an integer >= 0", n)
        _require(0 <= self.randaugment_m <= _MAX_LEVEL, "--randaugment-m", "a magnitude in [0, 10]",
                 self.randaugment_m)
        return self


def _require(ok: bool, flag: str, expectation: str, value: object) -> None:
    if not ok:  # NaN fails every comparison, so it lands here too
        raise VitDeployError(f"{flag} must be {expectation}, got {value!r}")


def _is_range(pair: tuple[float, float], upper: float) -> bool:
    return len(pair) == 2 and 0 < pair[0] <= pair[1] <= upper


# --- random draws -----------------------------------------------------------------------------


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _signed(value: float, generator: torch.Generator) -> float:
    return -value if _uniform(generator) > 0.5 else value


# --- per-image ops ----------------------------------------------------------------------------


def train_image(image: Image.Image, img_size: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random-resized crop (bilinear), horizontal flip and RandAugment of an "L" or "RGB" image.

    Returns uint8 (C, img_size, img_size) with C the image's band count; every random choice
    comes from ``generator``.
    """
    if image.mode not in ("L", "RGB"):
        raise VitDeployError(f"augmentation needs an 'L' or 'RGB' image, got mode {image.mode!r}; convert it first")
    top, left, height, width = _crop_box(image.width, image.height, config, generator)
    image = image.crop((left, top, left + width, top + height))
    image = image.resize((img_size, img_size), Image.Resampling.BILINEAR)
    if _uniform(generator) < config.hflip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = _rand_augment(image, config, generator)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()


def _crop_box(width: int, height: int, config: AugmentConfig, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random-resized crop, as torchvision's RandomResizedCrop draws it."""
    area = width * height
    log_ratio = (math.log(config.ratio[0]), math.log(config.ratio[1]))
    for _ in range(_CROP_TRIES):
        target_area = area * _uniform(generator, *config.scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            return _randint(generator, 0, height - crop_h), _randint(generator, 0, width - crop_w), crop_h, crop_w
    # No try fitted: a centred crop of the whole image, its aspect clamped into `ratio`.
    crop_w, crop_h = width, height
    if width / height < config.ratio[0]:
        crop_h = round(width / config.ratio[0])
    elif width / height > config.ratio[1]:
        crop_w = round(height * config.ratio[1])
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _rand_augment(image: Image.Image, config: AugmentConfig, generator: torch.Generator) -> Image.Image:
    """timm's RandAugment: n ops drawn with replacement, each applied with probability 0.5."""
    if config.randaugment_n == 0:
        return image
    for index in torch.randint(len(_RAND_AUGMENT_OPS), (config.randaugment_n,), generator=generator).tolist():
        if _uniform(generator) > _RAND_AUGMENT_PROB:
            continue
        level = config.randaugment_m
        if config.randaugment_mstd > 0:
            level += config.randaugment_mstd * float(torch.randn((), generator=generator, dtype=torch.float64))
        image = _RAND_AUGMENT_OPS[index](image, min(max(level, 0.0), _MAX_LEVEL), generator)
    return image


_Op = Callable[[Image.Image, float, torch.Generator], Image.Image]


def _without_level(op: Callable[[Image.Image], Image.Image]) -> _Op:
    return lambda image, _level, _generator: op(image)


def _affine(image: Image.Image, coefficients: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, coefficients, resample=_AFFINE_RESAMPLE,
                           fillcolor=(_FILL,) * len(image.getbands()))


def _rotate(image: Image.Image, level: float, generator: torch.Generator) -> Image.Image:
    degrees = _signed(level / _MAX_LEVEL * 30.0, generator)
    return image.rotate(degrees, resample=_AFFINE_RESAMPLE, fillcolor=(_FILL,) * len(image.getbands()))


def _shear(image: Image.Image, level: float, generator: torch.Generator, axis: str) -> Image.Image:
    factor = _signed(level / _MAX_LEVEL * 0.3, generator)
    return _affine(image, (1, factor, 0, 0, 1, 0) if axis == "x" else (1, 0, 0, factor, 1, 0))


def _translate(image: Image.Image, level: float, generator: torch.Generator, axis: str) -> Image.Image:
    fraction = _signed(level / _MAX_LEVEL * 0.45, generator)  # timm's translate_pct
    if axis == "x":
        return _affine(image, (1, 0, fraction * image.width, 0, 1, 0))
    return _affine(image, (1, 0, 0, 0, 1, fraction * image.height))


def _posterize(image: Image.Image, level: float, _generator: torch.Generator) -> Image.Image:
    return ImageOps.posterize(image, int(level / _MAX_LEVEL * 4))  # bits kept: fewer at lower levels, as timm


def _solarize(image: Image.Image, level: float, _generator: torch.Generator) -> Image.Image:
    return ImageOps.solarize(image, min(256, int(level / _MAX_LEVEL * 256)))


def _solarize_add(image: Image.Image, level: float, _generator: torch.Generator) -> Image.Image:
    add = min(128, int(level / _MAX_LEVEL * 110))
    lut = [min(255, value + add) if value < 128 else value for value in range(256)]
    return image.point(lut * len(image.getbands()))


def _enhance(image: Image.Image, level: float, _generator: torch.Generator, enhancer: type) -> Image.Image:
    return enhancer(image).enhance(level / _MAX_LEVEL * 1.8 + 0.1)


# timm's _RAND_TRANSFORMS, in its order.
_RAND_AUGMENT_OPS: list[_Op] = [
    _without_level(ImageOps.autocontrast),
    _without_level(ImageOps.equalize),
    _without_level(ImageOps.invert),
    _rotate,
    _posterize,
    _solarize,
    _solarize_add,
    partial(_enhance, enhancer=ImageEnhance.Color),
    partial(_enhance, enhancer=ImageEnhance.Contrast),
    partial(_enhance, enhancer=ImageEnhance.Brightness),
    partial(_enhance, enhancer=ImageEnhance.Sharpness),
    partial(_shear, axis="x"),
    partial(_shear, axis="y"),
    partial(_translate, axis="x"),
    partial(_translate, axis="y"),
]


def random_erase(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """timm's RandomErasing in "pixel" mode on one normalized image (C, H, W), with probability reprob.

    The erased box covers 2% to 1/3 of the image with a log-uniform aspect in [0.3, 3.3] and is
    filled with standard normal noise per pixel and channel; returns a new tensor.
    """
    erased = x.clone()
    if _uniform(generator) >= config.reprob:
        return erased
    channels, height, width = x.shape
    for _ in range(_CROP_TRIES):
        target_area = height * width * _uniform(generator, *_ERASE_AREA)
        aspect = math.exp(_uniform(generator, *_ERASE_LOG_ASPECT))
        box_h = round(math.sqrt(target_area * aspect))
        box_w = round(math.sqrt(target_area / aspect))
        if box_h < height and box_w < width:
            top, left = _randint(generator, 0, height - box_h), _randint(generator, 0, width - box_w)
            noise = torch.randn((channels, box_h, box_w), generator=generator)
            erased[:, top:top + box_h, left:left + box_w] = noise.to(device=x.device, dtype=x.dtype)
            break
    return erased


# --- per-batch mixing and targets -------------------------------------------------------------


@dataclass
class MixPlan:
    """Mixup / CutMix draws for a global batch of ``n`` images; pair k is images 2k and 2k+1.

    For an odd ``n`` the last image has no pair and is left unmixed.
    """

    n: int
    """Images in the global batch."""
    img_size: int
    """Height and width of the images, which the CutMix boxes refer to."""
    lam: torch.Tensor
    """(n // 2,) float64: weight of each image's own content and target (1 where the pair is not mixed)."""
    cutmix: torch.Tensor
    """(n // 2,) bool: the pair swaps a box (CutMix) rather than blending (Mixup)."""
    box: torch.Tensor
    """(n // 2, 4) int64: y0, y1, x0, x1 of the swapped box (zeros unless CutMix)."""


def plan_mix(n: int, img_size: int, config: AugmentConfig, generator: torch.Generator) -> MixPlan:
    """Draw timm's pair-mode Mixup / CutMix for a global batch of ``n`` images from ``generator``."""
    pairs = n // 2
    mixing = torch.rand(pairs, generator=generator, dtype=torch.float64) < config.mix_prob
    if config.mixup > 0 and config.cutmix > 0:
        use_cutmix = torch.rand(pairs, generator=generator, dtype=torch.float64) < config.switch_prob
    else:
        use_cutmix = torch.full((pairs,), config.cutmix > 0)
    lam = torch.ones(pairs, dtype=torch.float64)
    if config.mixup > 0:
        lam = torch.where(use_cutmix, lam, _sample_beta(config.mixup, pairs, generator))
    if config.cutmix > 0:
        lam = torch.where(use_cutmix, _sample_beta(config.cutmix, pairs, generator), lam)
    lam = torch.where(mixing, lam, 1.0)
    use_cutmix &= mixing
    box = torch.where(use_cutmix.unsqueeze(1), _cutmix_boxes(lam, img_size, generator), 0)
    box_area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
    lam = torch.where(use_cutmix, 1.0 - box_area.double() / img_size**2, lam)  # the clipped box's true share
    return MixPlan(n=n, img_size=img_size, lam=lam, cutmix=use_cutmix, box=box)


def _sample_beta(alpha: float, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` exact draws from Beta(alpha, alpha) as float64: X / (X + Y) with X, Y ~ Gamma(alpha)."""
    # sigmoid(log X - log Y) == X / (X + Y), and stays finite where a tiny alpha underflows X and Y.
    return torch.sigmoid(_sample_log_gamma(alpha, count, generator) - _sample_log_gamma(alpha, count, generator))


def _sample_log_gamma(shape: float, count: int, generator: torch.Generator) -> torch.Tensor:
    """log of ``count`` draws from Gamma(shape, 1), using only ``generator``.

    torch.distributions cannot take a generator, so: Marsaglia & Tsang's rejection sampler (exact)
    for Gamma(shape + 1), times U ** (1 / shape), which is exactly Gamma(shape) for any shape > 0.
    """
    d = shape + 1 - 1 / 3
    c = 1 / math.sqrt(9 * d)
    log_gamma = torch.empty(count, dtype=torch.float64)
    pending = torch.arange(count)
    while pending.numel():
        z = torch.randn(pending.numel(), generator=generator, dtype=torch.float64)
        u = torch.rand(pending.numel(), generator=generator, dtype=torch.float64)
        v = (1 + c * z) ** 3
        accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v))
        log_gamma[pending[accept]] = math.log(d) + torch.log(v[accept])
        pending = pending[~accept]
    return log_gamma + torch.log(torch.rand(count, generator=generator, dtype=torch.float64)) / shape


def _cutmix_boxes(lam: torch.Tensor, img_size: int, generator: torch.Generator) -> torch.Tensor:
    """(len(lam), 4) boxes y0, y1, x0, x1 of area about 1 - lam, centred anywhere, clipped to the image."""
    cut = (img_size * torch.sqrt(1 - lam)).long()
    centre_y = torch.randint(0, img_size, lam.shape, generator=generator)
    centre_x = torch.randint(0, img_size, lam.shape, generator=generator)
    half = cut // 2
    return torch.stack([(centre_y - half).clamp(0, img_size), (centre_y + half).clamp(0, img_size),
                        (centre_x - half).clamp(0, img_size), (centre_x + half).clamp(0, img_size)], dim=1)


def apply_mix(x: torch.Tensor, targets: torch.Tensor, plan: MixPlan, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix rows ``start .. start + len(x)`` of the planned global batch: images (b, C, H, W), soft targets (b, K).

    ``start`` is even and the slice holds whole pairs (or ends the batch); returns new tensors equal
    to the same rows of ``apply_mix`` on the whole global batch, on ``x``'s device.
    """
    _check_slice(x, targets, plan, start)
    pairs = len(x) // 2
    first = start // 2
    lam = plan.lam[first:first + pairs].to(x.device)
    cutmix = plan.cutmix[first:first + pairs].to(x.device).view(pairs, 1, 1, 1, 1)
    box_mask = _box_mask(plan.box[first:first + pairs].to(x.device), plan.img_size).unsqueeze(1).unsqueeze(1)
    images = x[:2 * pairs].unflatten(0, (pairs, 2))
    partners = images.flip(1)
    weight = lam.to(x.dtype).view(pairs, 1, 1, 1, 1)
    blended = weight * images + (1 - weight) * partners
    mixed = torch.where(cutmix, torch.where(box_mask, partners, images), blended)
    own = targets[:2 * pairs].unflatten(0, (pairs, 2))
    target_weight = lam.to(targets.dtype).view(pairs, 1, 1)
    mixed_targets = target_weight * own + (1 - target_weight) * own.flip(1)
    return (torch.cat([mixed.flatten(0, 1), x[2 * pairs:]]),
            torch.cat([mixed_targets.flatten(0, 1), targets[2 * pairs:]]))


def _check_slice(x: torch.Tensor, targets: torch.Tensor, plan: MixPlan, start: int) -> None:
    end = start + len(x)
    if start < 0 or start % 2 or end > plan.n or (len(x) % 2 and end != plan.n):
        raise ValueError(f"rows {start}..{end} of a global batch of {plan.n} do not hold whole pairs")
    if len(targets) != len(x):
        raise ValueError(f"{len(x)} images but {len(targets)} targets")
    if tuple(x.shape[-2:]) != (plan.img_size, plan.img_size):
        raise ValueError(f"images are {tuple(x.shape[-2:])} but the plan is for {plan.img_size}x{plan.img_size}")


def _box_mask(box: torch.Tensor, img_size: int) -> torch.Tensor:
    """(k, img_size, img_size) bool: inside box k."""
    coords = torch.arange(img_size, device=box.device)
    inside_y = (coords >= box[:, 0:1]) & (coords < box[:, 1:2])
    inside_x = (coords >= box[:, 2:3]) & (coords < box[:, 3:4])
    return inside_y.unsqueeze(2) & inside_x.unsqueeze(1)


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Label-smoothed one-hot float32 targets (timm's convention): off = smoothing / K, on = 1 - smoothing + off."""
    off = smoothing / num_classes
    targets = torch.full((len(labels), num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1).long(), 1.0 - smoothing + off)


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum(targets * log_softmax(logits)) (timm's SoftTargetCrossEntropy)."""
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
