"""2:4 semi-structured sparsity: magnitude masks on the block Linears, and a verifier.

In every group of 4 consecutive weights along a Linear's *input* dim, the 2 of largest
magnitude stay and the other 2 become exact zeros (NVIDIA's ASP recipe). Sparse tensor cores
need the input and output dims of each such Linear to be multiples of 16; NViT with
``round_to=16`` guarantees that. The pattern's constants and check live in
``vitdeploy.models.sparse24``. The spec records ``sparsity="2:4"`` so builders ask for sparse
kernels. The verifier checks the pattern on any state dict, or on the MatMul/Gemm weights of an
exported ONNX model (to prove the export kept the zeros).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import evaluate
from vitdeploy.export.rewrite import load_onnx
from vitdeploy.models.groups import block_linear_weights
from vitdeploy.models.sparse24 import DIM_MULTIPLE, GROUP, KEPT, PATTERN, fits_24_kernels, nonzeros_per_group
from vitdeploy.models.vit import ViT
from vitdeploy.train.config import TrainConfig
from vitdeploy.train.loop import fine_tune

def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the 2 largest-magnitude weights of every 4 consecutive along the last (input) dim."""
    if weight.shape[-1] % GROUP:
        raise VitDeployError(f"2:4 needs an input dim divisible by {GROUP}, got shape {tuple(weight.shape)}")
    groups = weight.detach().abs().reshape(*weight.shape[:-1], -1, GROUP)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, groups.topk(KEPT, dim=-1).indices, True)
    return mask.reshape(weight.shape)


def sparse_weight_names(model: ViT) -> list[str]:
    """The weights 2:4 applies to: every Linear inside the transformer blocks (in parameter order)."""
    linears = block_linear_weights(model.spec)
    return [name for name, _ in model.named_parameters() if name in linears]


def require_24_dims(model: ViT) -> None:
    """Raise ``VitDeployError`` unless every block Linear has in/out dims divisible by 16."""
    params = dict(model.named_parameters())
    wrong = [f"{name} ({params[name].shape[0]}×{params[name].shape[1]})" for name in sparse_weight_names(model)
             if not fits_24_kernels(params[name].shape)]
    if wrong:
        raise VitDeployError(
            f"2:4 sparsity needs the input and output dims of every block Linear divisible by {DIM_MULTIPLE}, "
            f"but {len(wrong)} are not (e.g. {', '.join(wrong[:3])}): prune with `vitdeploy prune nvit "
            f"MODEL --round-to {DIM_MULTIPLE}` first")


def sparsify_24(model: ViT) -> tuple[ViT, dict]:
    """A copy of ``model`` with 2:4 magnitude masks on every block Linear and ``spec.sparsity="2:4"``.

    Returns the model and a JSON-ready report (layers, zeroed weights, verification).
    """
    require_24_dims(model)
    names = sparse_weight_names(model)
    state = model.state_dict()
    zeroed = 0
    for name in names:
        mask = mask_24(state[name])
        zeroed += int((state[name] != 0).logical_and(~mask).sum())
        state[name] = state[name] * mask
    sparse = ViT(dataclasses.replace(model.spec, sparsity=PATTERN))
    sparse.load_state_dict(state)
    sparse.eval()
    verification = verify_24({name: state[name] for name in names})
    report = {"pattern": PATTERN, "layers": len(names), "weights": sum(state[n].numel() for n in names),
              "zeroed": zeroed, "verified": verification["all_satisfied"]}
    return sparse, report


def sparsify_and_fine_tune(model: ViT, train_data, steps: int, config: TrainConfig, eval_data=None,
                           progress: bool = True) -> tuple[ViT, dict]:
    """2:4 masks, then ``steps`` fine-tuning steps (distilled from ``model``, zeros kept) when
    ``train_data`` is given; the report adds top-1 before, after masking and after the fine-tune."""
    sparse, report = sparsify_24(model)
    accuracy = {"dense": evaluate(model, eval_data), "masked": evaluate(sparse, eval_data)} if eval_data else {}
    if train_data is not None and steps > 0:
        with preserve_24(sparse):
            report["fine_tune"] = fine_tune(sparse, train_data, config, steps, teacher=model, progress=progress,
                                            desc="2:4 fine-tune")
        if eval_data is not None:
            accuracy["fine_tuned"] = evaluate(sparse, eval_data)
    sparse.eval()
    report.update(method="sparse24", accuracy=accuracy, verified_after=verify_24(
        {name: sparse.state_dict()[name] for name in sparse_weight_names(sparse)})["all_satisfied"])
    return sparse, report


@contextlib.contextmanager
def preserve_24(model: ViT) -> Iterator[None]:
    """While active, the pruned weights of ``model``'s 2:4 layers get zero gradients, so fine-tuning
    (AdamW, decoupled weight decay) keeps them exactly zero."""
    params = dict(model.named_parameters())
    handles = []
    for name in sparse_weight_names(model):
        mask = (params[name].detach() != 0).to(params[name].dtype)
        handles.append(params[name].register_hook(lambda grad, mask=mask: grad * mask))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def verify_24(tensors: Mapping[str, torch.Tensor | np.ndarray], input_axis: Mapping[str, int] | None = None) -> dict:
    """Check the 2:4 pattern (at most 2 non-zeros in every 4 consecutive weights along the input dim).

    Every 2-D tensor whose input dim is a multiple of 4 is checked; ``input_axis`` names the
    input axis per tensor (default 1, PyTorch's ``(out, in)`` Linear layout); others are skipped.
    Returns which tensors satisfy the pattern (``sparse``), which do not (``dense``), per-tensor
    details and ``all_satisfied`` (over the checked tensors).
    """
    input_axis = input_axis or {}
    details, skipped = {}, []
    for name, tensor in tensors.items():
        array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
        axis = input_axis.get(name, 1)
        if array.ndim != 2 or array.shape[axis] % GROUP:
            skipped.append(name)
            continue
        details[name] = _pattern_check(np.moveaxis(array, axis, -1))
    sparse = [name for name, d in details.items() if d["violating_groups"] == 0]
    return {"pattern": PATTERN, "sparse": sparse, "dense": [n for n in details if n not in sparse],
            "skipped": skipped, "all_satisfied": bool(details) and len(sparse) == len(details),
            "tensors": details}


def verify_24_onnx(path: str | Path) -> dict:
    """``verify_24`` on the weight initializers of an ONNX model's MatMul and Gemm nodes.

    The exporter stores a Linear used by MatMul as ``(in, out)`` and by Gemm with ``transB=1``
    as ``(out, in)``; the input axis is taken from the consuming node.
    """
    graph = load_onnx(Path(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    weights, axes = {}, {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        name = node.input[1]
        weights[name] = numpy_helper.to_array(initializers[name])
        axes[name] = 1 if node.op_type == "Gemm" and _attribute(node, "transB", 0) else 0
    report = verify_24(weights, axes)
    report["onnx"] = str(path)
    return report


def _pattern_check(array: np.ndarray) -> dict:
    """Counts for a 2-D array whose last axis is the input dim."""
    nonzero = nonzeros_per_group(array)
    return {"shape": list(array.shape), "groups": int(nonzero.size),
            "violating_groups": int((nonzero > KEPT).sum()), "zero_fraction": float((array == 0).mean())}


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return attribute.i
    return default
