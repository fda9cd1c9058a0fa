"""Torch's CPU thread count for the span of a call, restored afterwards.

``torch.set_num_threads`` is process-wide; library functions set it only through
``torch_threads``, so a caller's own setting survives them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` torch CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
