"""How training images are prepared: the augmentations and the loader processes (settings only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vitdeploy.data.augment import AugmentConfig


@dataclass(frozen=True)
class Pipeline:
    """Training data settings. ``augment``: the DeiT augmentations for image folders (None: the
    evaluation transform; Fashion-MNIST in memory keeps its shift/flip); ``workers``: loader
    processes per training process (None: one per free core, at most 16; 0: load in the training
    process)."""

    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    workers: int | None = None
