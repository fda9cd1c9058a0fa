"""The structure map: every dim's slices partition the axes they cover, every parameter is
covered, and zeroing a dim's indices through the map computes what compacting them does."""

import copy

import pytest
import torch
from tests.conftest import tiny_model, tiny_spec
from torch import nn

from vitdeploy.models.groups import EMB, all_dims, block_linear_weights, dim_size, structure_map
from vitdeploy.models.spec import BlockSpec
from vitdeploy.prune.methods.nvit.structural import compact, compaction_error


def random_spec(seed: int, distilled: bool = False, qkv_bias: bool = True):
    """A small spec whose blocks all differ in heads, QK, V and MLP dims (so no index formula
    that mixes them up can pass)."""
    generator = torch.Generator().manual_seed(seed)

    def pick(low, high):
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    blocks = [BlockSpec(heads=pick(1, 4), qk_dim=pick(2, 7), v_dim=pick(2, 7), mlp_dim=pick(3, 20))
              for _ in range(3)]
    return tiny_spec(embed_dim=pick(8, 24), blocks=blocks, distilled=distilled, qkv_bias=qkv_bias)


SPECS = [random_spec(seed, distilled, qkv_bias) for seed, distilled, qkv_bias in
         [(0, False, True), (1, True, True), (2, False, False), (3, True, False)]]


@pytest.mark.parametrize("spec", SPECS)
def test_each_dim_owns_a_position_through_one_index_at_most_and_all_dims_own_every_position(spec):
    shapes = {name: p.shape for name, p in tiny_model(spec).named_parameters()}
    owners = {}
    for dim, slices in structure_map(spec).items():
        assert len({(s.param, s.axis) for s in slices}) == len(slices), f"{dim} names an axis twice"
        for s in slices:
            assert s.positions.shape[0] == dim_size(spec, dim) and s.length == shapes[s.param][s.axis]
            flat = s.positions.flatten()
            assert len(flat.unique()) == len(flat), f"{dim} owns a position of {s.param} twice"
            assert 0 <= flat.min() and flat.max() < s.length
            owners.setdefault((s.param, s.axis), []).append(flat)
    for (param, axis), owned in owners.items():
        assert torch.equal(torch.cat(owned).unique(), torch.arange(shapes[param][axis])), f"{param} axis {axis}"


CHANNEL_AXIS = {"cls_token": 2, "dist_token": 2, "pos_embed": 2, "head.weight": 1, "head_dist.weight": 1}
"""The embedding-channel axis of the parameters outside the blocks (0 for the others)."""
BLOCK_CHANNEL_AXES = {"norm1.weight": 0, "norm1.bias": 0, "norm2.weight": 0, "norm2.bias": 0, "attn.qkv.weight": 1,
                      "attn.proj.weight": 0, "attn.proj.bias": 0, "mlp.fc1.weight": 1, "mlp.fc2.weight": 0,
                      "mlp.fc2.bias": 0}


@pytest.mark.parametrize("spec", SPECS)
def test_the_map_covers_every_block_parameter_axis_and_every_embedding_channel_axis(spec):
    smap = structure_map(spec)
    assert list(smap) == all_dims(spec)
    params = dict(tiny_model(spec).named_parameters())
    outside = {(name, CHANNEL_AXIS.get(name, 0)) for name in params  # head biases run over classes: no dim
               if not name.startswith("blocks.") and name not in ("head.bias", "head_dist.bias")}
    inside = {(name, axis) for name, param in params.items() if name.startswith("blocks.")
              for axis in range(param.ndim)}
    block_channels = {(f"blocks.{i}.{name}", axis) for i in range(spec.depth)
                      for name, axis in BLOCK_CHANNEL_AXES.items()}
    assert {(s.param, s.axis) for slices in smap.values() for s in slices} == outside | inside
    assert {(s.param, s.axis) for s in smap[EMB]} == outside | block_channels


def zero_through_map(model, dim: str, dropped: torch.Tensor):
    """A copy of ``model`` with every position the dropped indices of ``dim`` own set to 0."""
    zeroed = tiny_model(model.spec)
    zeroed.load_state_dict(model.state_dict())
    params = dict(zeroed.named_parameters())
    with torch.no_grad():
        for s in structure_map(model.spec)[dim]:
            params[s.param].index_fill_(s.axis, s.positions[dropped].flatten(), 0.0)
    return zeroed


def keep_all_but(spec, dim: str, dropped: torch.Tensor) -> dict[str, torch.Tensor]:
    keep = {d: torch.ones(dim_size(spec, d), dtype=torch.bool) for d in all_dims(spec)}
    keep[dim][dropped] = False
    return keep


def random_drop(size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices to drop: at least one, never all."""
    order = torch.randperm(size, generator=generator)
    return order[: int(torch.randint(1, size, (1,), generator=generator))]


@pytest.mark.parametrize("spec", SPECS)
def test_zeroing_a_block_dim_through_the_map_computes_what_compacting_it_does(spec):
    """Zeroed heads, QK, V or MLP indices contribute nothing (no norm runs over them), so the
    zeroed full-size model must equal the compacted one."""
    model = tiny_model(spec)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        unpruned = copy.deepcopy(model).double()(x)
    generator = torch.Generator().manual_seed(5)
    for dim in all_dims(spec)[1:]:
        if dim_size(spec, dim) < 2:
            continue
        dropped = random_drop(dim_size(spec, dim), generator)
        with torch.no_grad():
            expected = zero_through_map(model, dim, dropped).double()(x)
            compacted = compact(model, keep_all_but(spec, dim, dropped)).double()(x)
            assert torch.isfinite(compacted).all() and torch.isfinite(expected).all()
            assert (compacted - expected).abs().max() <= 1e-10, dim
            assert (compacted - unpruned).abs().max() > 1e-6, f"dropping {dim} indices changed nothing"


@pytest.mark.parametrize("spec", SPECS)
def test_masking_embedding_channels_computes_what_compacting_them_does(spec):
    """The norms run over the embedding channels, so their masked model renormalises over the kept ones."""
    model = tiny_model(spec)
    dropped = random_drop(spec.embed_dim, torch.Generator().manual_seed(6))
    keep = keep_all_but(spec, EMB, dropped)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    compacted = compact(model, keep)
    error = compaction_error(model, keep, compacted, x)
    assert error <= 1e-5  # False for NaN
    with torch.no_grad():
        assert (compacted(x) - model(x)).abs().max() > 1e-3


@pytest.mark.parametrize("spec", SPECS)
def test_the_block_linear_weights_are_those_of_every_linear_inside_the_blocks(spec):
    model = tiny_model(spec)
    linears = {f"blocks.{name}.weight" for name, module in model.blocks.named_modules()
               if isinstance(module, nn.Linear)}
    assert block_linear_weights(spec) == linears and len(linears) == 4 * spec.depth
