"""The 2:4 pattern check shared by pruning and the sparse-kernel backends."""

import numpy as np
import pytest
import torch

from vitdeploy.errors import VitDeployError
from vitdeploy.models.sparse24 import fits_24_kernels, nonzeros_per_group, require_24_weight


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """Zero the first two of every four inputs."""
    mask = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(weight.shape[1] // 4)
    return weight * mask


def test_nonzeros_are_counted_per_group_of_four_inputs_for_torch_and_numpy():
    matrix = torch.tensor([[1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0, 4.0]])
    assert nonzeros_per_group(matrix).tolist() == [[3, 1]]
    assert nonzeros_per_group(matrix.numpy()).tolist() == [[3, 1]]
    assert isinstance(nonzeros_per_group(matrix.numpy()), np.ndarray)


def test_kernel_dims_are_multiples_of_sixteen():
    assert fits_24_kernels((32, 64)) and not fits_24_kernels((24, 64)) and not fits_24_kernels((32, 8))


def test_a_weight_is_accepted_only_with_the_pattern_and_fitting_dims():
    weight = two_four(torch.randn(32, 64))
    require_24_weight(weight, "ok", "fix it")
    weight[0, :4] = 1.0
    with pytest.raises(VitDeployError, match="dense group: weights are not 2:4 sparse .*: fix it"):
        require_24_weight(weight, "dense group", "fix it")
    with pytest.raises(VitDeployError, match="odd rows: 2:4 kernels need weight dims divisible by 16, got 24×64"):
        require_24_weight(two_four(torch.randn(24, 64)), "odd rows", "fix it")
