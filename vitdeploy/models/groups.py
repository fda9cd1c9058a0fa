"""The structure map of a ViT: every prunable dimension and the parameter slices it owns.

A *dim* is one prunable dimension of the network:

- ``emb``: the embedding channels, shared by the patch embedding, class/distillation tokens,
  position embedding, every norm, every block's input/output projections and the head(s);
- ``blocks.{i}.heads``: the heads of block i;
- ``blocks.{i}.qk``: the per-head query/key dims of block i (one index prunes it in every head);
- ``blocks.{i}.v``: the per-head value dims of block i (likewise), with the matching ``proj`` inputs;
- ``blocks.{i}.mlp``: the hidden neurons of block i's MLP.

``structure_map(spec)`` lists, for every dim, the ``Slice`` s it owns: a parameter, an axis, and
for each index of the dim the positions along that axis it owns. The per-head dims are resolved
here, and only here, through the head-major layout of the fused ``qkv`` ([q (H·qk) | k (H·qk) |
v (H·v)], see ``vitdeploy.models.vit``) and of the ``proj`` inputs. Within one dim, a position
belongs to at most one index; several dims may own it (a query row belongs to a head and to a
QK index). A position survives pruning when every index owning it is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from vitdeploy.models.spec import ViTSpec

EMB = "emb"
SPEC_FIELDS = {"heads": "heads", "qk": "qk_dim", "v": "v_dim", "mlp": "mlp_dim"}
"""The ``BlockSpec`` field holding the size of each kind of block dim."""
BLOCK_DIMS = tuple(SPEC_FIELDS)


@dataclass(frozen=True)
class Slice:
    """The part of one parameter axis a dim owns: ``positions[j]`` are the positions along
    ``axis`` of ``param`` (``length`` long) that index j of the dim owns (every index owns equally many)."""

    param: str
    axis: int
    length: int
    positions: torch.Tensor


StructureMap = dict[str, list[Slice]]


def dim_key(block: int, kind: str) -> str:
    """The name of a block's dim, e.g. ``blocks.2.mlp``."""
    return f"blocks.{block}.{kind}"


def all_dims(spec: ViTSpec) -> list[str]:
    """Every dim of ``spec``: ``emb``, then each block's heads, qk, v and mlp."""
    return [EMB] + [dim_key(i, kind) for i in range(spec.depth) for kind in BLOCK_DIMS]


def dim_size(spec: ViTSpec, dim: str) -> int:
    """The current size of a dim."""
    if dim == EMB:
        return spec.embed_dim
    block, kind = _block_and_kind(dim)
    return getattr(spec.blocks[block], SPEC_FIELDS[kind])


def with_dim_sizes(spec: ViTSpec, sizes: Mapping[str, int]) -> ViTSpec:
    """A copy of ``spec`` with the given dims resized (not validated)."""
    blocks = list(spec.blocks)
    for dim, size in sizes.items():
        if dim != EMB:
            block, kind = _block_and_kind(dim)
            blocks[block] = dataclasses.replace(blocks[block], **{SPEC_FIELDS[kind]: size})
    return dataclasses.replace(spec, embed_dim=sizes.get(EMB, spec.embed_dim), blocks=blocks)


def structure_map(spec: ViTSpec) -> StructureMap:
    """Every dim of ``spec`` (in ``all_dims`` order) → the slices it owns."""
    tokens = ["cls_token", "pos_embed"] + (["dist_token"] if spec.distilled else [])
    heads = ["head.weight"] + (["head_dist.weight"] if spec.has_dist_head else [])
    channels = _identity(spec.embed_dim)
    emb = (_slices(["patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"], 0, channels)
           + _slices(tokens, 2, channels) + _slices(heads, 1, channels))
    dims = {EMB: emb}
    for i in range(spec.depth):
        block_dims = _block_map(spec, i)
        emb += block_dims.pop(EMB)
        dims.update(block_dims)
    return dims


def kept_masks(spec: ViTSpec, keep: Mapping[str, torch.Tensor]) -> dict[str, dict[int, torch.Tensor]]:
    """For every parameter the map covers: axis → bool mask of the positions that survive ``keep``
    (one bool mask per dim, True = kept)."""
    masks: dict[str, dict[int, torch.Tensor]] = {}
    for dim, slices in structure_map(spec).items():
        dropped = ~keep[dim]
        for s in slices:
            mask = masks.setdefault(s.param, {}).setdefault(s.axis, torch.ones(s.length, dtype=torch.bool))
            mask[s.positions[dropped].flatten()] = False
    return masks


def block_linear_weights(spec: ViTSpec) -> set[str]:
    """The weights of the Linears inside the blocks: the block parameters whose input axis (1) a dim owns."""
    return {s.param for slices in structure_map(spec).values() for s in slices
            if s.axis == 1 and s.param.startswith("blocks.")}


def _block_map(spec: ViTSpec, i: int) -> StructureMap:
    """Block i's dims → slices, with ``emb`` holding the block's share of the embedding channels."""
    block, p = spec.blocks[i], f"blocks.{i}."
    qk_width, v_width = block.heads * block.qk_dim, block.heads * block.v_dim
    qkv_length = 2 * qk_width + v_width
    q_rows = _grid(block.heads, block.qk_dim)  # [head, qk index] → row of qkv
    k_rows = q_rows + qk_width
    v_cols = _grid(block.heads, block.v_dim)  # [head, v index] → column of proj (and row of qkv's v part)
    v_rows = v_cols + 2 * qk_width
    qkv = [p + "attn.qkv.weight"] + ([p + "attn.qkv.bias"] if spec.qkv_bias else [])
    proj_in = p + "attn.proj.weight"
    channels, neurons = _identity(spec.embed_dim), _identity(block.mlp_dim)
    outputs = ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.proj.weight", "attn.proj.bias",
               "mlp.fc2.weight", "mlp.fc2.bias"]
    return {
        EMB: _slices([p + n for n in outputs], 0, channels) + _slices([p + "attn.qkv.weight", p + "mlp.fc1.weight"],
                                                                      1, channels),
        dim_key(i, "heads"): _slices(qkv, 0, torch.cat([q_rows, k_rows, v_rows], 1), qkv_length)
                             + _slices([proj_in], 1, v_cols),
        dim_key(i, "qk"): _slices(qkv, 0, torch.cat([q_rows.T, k_rows.T], 1), qkv_length),
        dim_key(i, "v"): _slices(qkv, 0, v_rows.T, qkv_length) + _slices([proj_in], 1, v_cols.T),
        dim_key(i, "mlp"): _slices([p + "mlp.fc1.weight", p + "mlp.fc1.bias"], 0, neurons)
                           + _slices([p + "mlp.fc2.weight"], 1, neurons),
    }


def _slices(params: list[str], axis: int, positions: torch.Tensor, length: int | None = None) -> list[Slice]:
    """One slice per parameter; ``length`` defaults to the axis being all of ``positions``."""
    return [Slice(param, axis, positions.numel() if length is None else length, positions) for param in params]


def _grid(outer: int, inner: int) -> torch.Tensor:
    """(outer, inner) positions of an outer-major layout: ``[o, j] = o·inner + j``."""
    return torch.arange(outer * inner).reshape(outer, inner)


def _identity(size: int) -> torch.Tensor:
    """Index j owns position j alone."""
    return torch.arange(size).unsqueeze(1)


def _block_and_kind(dim: str) -> tuple[int, str]:
    _, block, kind = dim.split(".")
    return int(block), kind
