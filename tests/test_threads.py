"""torch_threads: the thread count inside the block, the caller's afterwards (also on errors)."""

import pytest
import torch

from vitdeploy.threads import torch_threads


def test_the_count_holds_inside_and_is_restored_after_even_on_error():
    previous = torch.get_num_threads()
    other = previous + 1
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == previous
    with pytest.raises(KeyError), torch_threads(other):
        raise KeyError
    assert torch.get_num_threads() == previous
