"""Batch-wise image transforms in pure torch: model-input preparation and training augmentation."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from vitdeploy.errors import VitDeployError


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Return ``(x - mean) / std`` per channel for a float image in [0, 1], shaped (C, H, W) or (N, C, H, W)."""
    channels = x.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise VitDeployError(
            f"mean/std have {len(mean)}/{len(std)} values but the images have {channels} channels; "
            "give one value per channel"
        )
    mean_t = torch.as_tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean_t) / std_t


def to_model_input(
    images: torch.Tensor,
    img_size: int,
    in_chans: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: bool = False,
) -> torch.Tensor:
    """Turn uint8 images (N, H, W) or (N, C, H, W) into normalized float32 (N, in_chans, img_size, img_size)."""
    x = images.unsqueeze(1) if images.dim() == 3 else images
    if x.dim() != 4:
        raise VitDeployError(f"expected images shaped (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    x = x.to(torch.float32) / 255.0
    x = _match_size(x, img_size, resize)
    x = _match_channels(x, in_chans)
    return normalize(x, mean, std)


def _match_size(x: torch.Tensor, img_size: int, resize: bool) -> torch.Tensor:
    height, width = x.shape[-2:]
    if (height, width) == (img_size, img_size):
        return x
    if not resize:
        raise VitDeployError(
            f"images are {height}x{width} but the model expects {img_size}x{img_size}; "
            "pass --resize to resize them"
        )
    return F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)


def _match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    channels = x.shape[1]
    if channels == in_chans:
        return x
    if channels == 1:
        return x.expand(-1, in_chans, -1, -1).contiguous()
    raise VitDeployError(
        f"images have {channels} channels but the model expects {in_chans}; "
        "use images with a matching number of channels"
    )


def random_crop_flip(batch: torch.Tensor, padding: int, generator: torch.Generator,
                     rows: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Shift each image of (N, C, H, W) by up to ``padding`` pixels (zero fill) and flip half of them.

    Equivalent to zero-padding by ``padding`` then taking a random HxW crop, plus a random
    horizontal flip with probability 0.5; all randomness comes from ``generator`` (a CPU one).
    ``rows = (start, stop, total)`` says that ``batch`` is rows start..stop of a batch of
    ``total`` images: the draws are made for all ``total`` and these rows get theirs.
    """
    if padding < 0:
        raise VitDeployError(f"crop padding must be >= 0, got {padding}")
    n, _, height, width = batch.shape
    start, stop, total = rows or (0, n, n)
    offsets = torch.randint(0, 2 * padding + 1, (2, total), generator=generator)[:, start:stop].to(batch.device)
    flips = (torch.rand(total, generator=generator) < 0.5)[start:stop].to(batch.device)
    padded = F.pad(batch, (padding, padding, padding, padding))
    rows_idx = offsets[0].view(n, 1) + torch.arange(height, device=batch.device).view(1, height)  # (N, H)
    cols = offsets[1].view(n, 1) + torch.arange(width, device=batch.device).view(1, width)  # (N, W)
    cols = torch.where(flips.view(n, 1), cols.flip(1), cols)
    batch_idx = torch.arange(n, device=batch.device).view(n, 1, 1)
    # Advanced indexing over (N, H, W) gathers every crop at once; channels move to the end.
    cropped = padded.permute(0, 2, 3, 1)[batch_idx, rows_idx.view(n, height, 1), cols.view(n, 1, width)]
    return cropped.permute(0, 3, 1, 2).contiguous()
