"""The 2:4 semi-structured sparsity pattern: its constants and its check, shared by pruning
(``vitdeploy.prune.sparsity``) and the backends that run 2:4 kernels.

In every group of 4 consecutive weights along a Linear's input dim at most 2 are non-zero.
Sparse tensor cores also need both dims of such a weight to be multiples of 16.
"""

from __future__ import annotations

import numpy as np
import torch

from vitdeploy.errors import VitDeployError

PATTERN = "2:4"
GROUP, KEPT = 4, 2
DIM_MULTIPLE = 16


def fits_24_kernels(shape: tuple[int, ...]) -> bool:
    """Whether every dim of a weight of ``shape`` is a multiple of ``DIM_MULTIPLE``."""
    return not any(d % DIM_MULTIPLE for d in shape)


def nonzeros_per_group(matrix: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Non-zero count of every group of ``GROUP`` along the last axis of a 2-D matrix, (rows, groups)."""
    return (matrix.reshape(matrix.shape[0], -1, GROUP) != 0).sum(-1)


def require_24_weight(weight: torch.Tensor, name: str, fix: str) -> None:
    """Raise ``VitDeployError`` unless the (out, in) ``weight`` can run on 2:4 kernels: dims multiples
    of ``DIM_MULTIPLE`` and at most ``KEPT`` non-zeros in every group of ``GROUP`` inputs. ``fix`` ends
    the message of a weight that is not 2:4 sparse (how to make it so)."""
    rows, cols = weight.shape
    if not fits_24_kernels(weight.shape):
        raise VitDeployError(f"{name}: 2:4 kernels need weight dims divisible by {DIM_MULTIPLE}, got {rows}×{cols}")
    if int(nonzeros_per_group(weight).max()) > KEPT:
        raise VitDeployError(f"{name}: weights are not 2:4 sparse (a group of {GROUP} has more than {KEPT} "
                             f"non-zeros): {fix}")
