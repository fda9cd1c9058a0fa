"""Graph passes after the torch export, so that each target runtime fuses the graph fully.

Standard-op passes, for every target (onnxscript's pattern rewriter, ``onnxscript.rewriter``):

* ``key_transpose``: torch's decomposition of ``scaled_dot_product_attention`` transposes the
  keys by flattening them to 3-D, transposing and reshaping back (eight extra shape nodes per
  block, plus a transpose that runs). One 4-D ``Transpose(perm=[0, 1, 3, 2])`` says the same:
  ONNX Runtime then folds it into the query-key ``FusedMatMul``, and TensorRT's attention
  fusion sees the plain Q·Kᵀ → Softmax → ·V chain that it matches.
* ``token_gather_first``: the head reads only the class token (a ``Gather`` on the token axis),
  and every op between the last attention and the head works token by token (the output
  projection, residual adds, LayerNorms, the MLP), so the gather moves up through them: the
  last block after its attention, and the final norm, run on one token instead of all of them.
  Exact: the same arithmetic on the same values. A distilled model's head reads two tokens
  from the final norm, so its gathers stay where they are.

GELU needs no pass at opset ≥ 20, where torch writes the ONNX ``Gelu`` op: ONNX Runtime fuses it
with its bias into ``BiasGelu`` and TensorRT imports it as one activation. At opset 18 and 19 it is
an Erf chain whose order ONNX Runtime does not recognise, so for ``--target onnxruntime`` ONNX
Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``) rewrites it into
``com.microsoft`` BiasGelu; for ``--target tensorrt`` it stays standard ops, which TensorRT's
point-wise fusion merges.

Not done, measured (ONNX Runtime 1.32, CPU, fmnist_vit, batch 64): the transformer optimizer's
SkipLayerNormalization fusion and onnxscript's MultiHeadAttention fusion both match our graph
but their CPU kernels are slower than the ops they replace (SkipLayerNormalization about 3×,
MultiHeadAttention about 2×), so neither is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes
from onnxscript.rewriter import pattern

from vitdeploy.export import check

#: First opset whose torch export writes GELU as the ONNX ``Gelu`` op.
ONNX_GELU_OPSET = 20


class KeyTranspose(pattern.RewriteRuleClassBase):
    """Reshape(Transpose(Reshape(key, [-1, S, d]), [0, 2, 1]), [B, H, d, S]) → Transpose(key, [0, 1, 3, 2])."""

    def pattern(self, op, key, flat_shape, out_shape):
        flat = op.Reshape(key, flat_shape, _allow_other_attributes=True, _outputs=["flat"])
        return op.Reshape(op.Transpose(flat, perm=[0, 2, 1]), out_shape, _allow_other_attributes=True,
                          _outputs=["keys_t"])

    def check(self, context, key, flat, keys_t, **_) -> pattern.MatchResult:
        """Exact when the first reshape merges the two leading axes and the second splits them back:
        with the head count and width static and the token axis the same (a number or one named dim)
        throughout, element counts fix the leading dim of each."""
        result = pattern.MatchResult()
        key_dims, flat_dims, out_dims = _dims(key), _dims(flat), _dims(keys_t)
        if key_dims is None or flat_dims is None or out_dims is None or len(key_dims) != 4 or len(out_dims) != 4:
            return result.fail("shapes unknown, or key or result not 4-D")
        _, heads, tokens, width = key_dims
        if not all(isinstance(d, int) for d in (heads, width)) or tokens is None:
            return result.fail("heads and head width must be static and the token axis known (a number or "
                               "a named dim)")
        if flat_dims[1:] != [tokens, width] or out_dims[1:] != [heads, width, tokens]:
            return result.fail("the reshapes do more than merge and split the two leading axes")
        return result

    def rewrite(self, op, key, **_):
        return op.Transpose(key, perm=[0, 1, 3, 2])


class TokenGatherFirst(pattern.RewriteRuleClassBase):
    """Gather(f(x…), i, axis=1) → f(Gather(x…, i, axis=1)) for an op ``f`` that works token by token.

    The head reads one token (``Gather`` on the token axis with a constant index); every op between
    it and the last attention works on each token alone, so the gather can run first and they on
    one token: the final LayerNorm, and the last block's MLP, residual adds and output projection.
    """

    def __init__(self, op_type: str, arity: int):
        super().__init__(f"token_gather_first_{op_type}")
        self.op_type, self.arity = op_type, arity

    def pattern(self, op, x1, x2, x3, index):
        inputs = (x1, x2, x3)[: self.arity]
        combined = getattr(op, self.op_type)(*inputs, _allow_other_attributes=True, _outputs=["combined"])
        return op.Gather(combined, index, axis=1)

    def check(self, context, index, combined, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if index.const_value is None or index.const_value.numpy().ndim != 0:
            return result.fail("the gathered token is not one constant index")
        tokens = _dims(combined)
        if tokens is None or len(tokens) != 3:
            return result.fail("the op's output is not (batch, tokens, width)")
        if self.op_type == "LayerNormalization" and combined.producer().attributes.get_int("axis", -1) not in (-1, 2):
            return result.fail("LayerNormalization does not normalise the last axis only")
        for position, value in enumerate(combined.producer().inputs):
            if _token_role(self.op_type, position, value, tokens[1]) is None:
                return result.fail("an input is broadcast along the token axis", value)
        return result

    def rewrite(self, op, index, combined, **_):
        node = combined.producer()
        inputs = [op.Gather(v, index, axis=1) if _token_role(self.op_type, position, v, None) == "tokens" else v
                  for position, v in enumerate(node.inputs)]
        attributes = {name: attr.value for name, attr in node.attributes.items()}
        if self.op_type == "LayerNormalization":
            attributes["axis"] = -1
        moved = getattr(op, self.op_type)(*inputs, **attributes)
        moved.producer().metadata_props.update(node.metadata_props)  # its module scope (read by quantize)
        return moved


def _token_role(op_type: str, position: int, value: ir.Value, tokens) -> str | None:
    """"tokens" when input ``position`` of the op has the token axis (axis 1 of 3, ``tokens`` long
    unless None), "kept" when the op applies it to every token alike (a bias, a scale, MatMul's
    constant weight matrix), None when neither holds."""
    dims = _dims(value)
    if dims is None:
        return None
    if op_type == "MatMul" and position == 1:
        return "kept" if len(dims) == 2 and value.const_value is not None else None
    if len(dims) == 3 and (tokens is None or dims[1] == tokens):
        return "tokens"
    return "kept" if len(dims) <= 1 else None


#: Token-wise ops the class-token gather moves through, with their input counts.
TOKEN_WISE_OPS = {"LayerNormalization": 3, "MatMul": 2, "Add": 2, "Mul": 2, "Div": 2, "Erf": 1, "Gelu": 1}
#: Each round is one sweep of the graph; ViT exports need at most a few, this bound is a safety net.
_MAX_GATHER_ROUNDS = 16

STANDARD_RULES = {
    "key_transpose": pattern.RewriteRuleSet([KeyTranspose.rule()]),
}
TOKEN_GATHER_RULES = pattern.RewriteRuleSet([TokenGatherFirst.rule(op, arity) for op, arity in TOKEN_WISE_OPS.items()])


@dataclass
class FusionReport:
    """What the passes did, and the graph's op counts at each stage (node totals in ``to_dict``)."""

    passes: dict[str, int]
    """How many sites each pass rewrote."""
    exported: dict[str, int]
    """Op counts of torch's export."""
    written: dict[str, int] = field(default_factory=dict)
    """Op counts of the .onnx written (after the passes)."""
    onnxruntime: dict[str, int] = field(default_factory=dict)
    """Op counts after ONNX Runtime's own graph optimisation (ORT_ENABLE_ALL, CPU), as it runs."""

    def to_dict(self) -> dict:
        stages = {"exported": self.exported, "written": self.written, "onnxruntime": self.onnxruntime}
        return {"passes": self.passes,
                "nodes": {stage: sum(counts.values()) for stage, counts in stages.items()},
                "op_counts": stages}


def fuse(path: str | Path, target: str, opset: int) -> FusionReport:
    """Rewrite the model at ``path`` in place for ``target``."""
    model = ir.load(str(path))
    report = FusionReport({}, check.op_counts(model.graph))
    ir_passes.ShapeInferencePass()(model)  # the rules' checks read shapes that torch leaves unknown
    report.passes = {name: rules.apply_to_model(model) for name, rules in STANDARD_RULES.items()}
    report.passes["token_gather_first"] = _gather_first(model)
    ir_passes.RemoveUnusedNodesPass()(model)
    proto = ir.serde.serialize_model(model)
    del proto.graph.value_info[:]  # ONNX Runtime (CPU) runs the graph 5-8 % faster without them (measured)
    onnx.save(proto, str(path))
    if target == "onnxruntime" and opset < ONNX_GELU_OPSET:
        report.passes["bias_gelu"] = _ort_gelu_fusion(path)
    return report


def _gather_first(model: ir.Model) -> int:
    """Move the head's token gathers up until no rule applies; merging the gathers that two
    paths bring to one value lets the next round move that one further."""
    total = 0
    for _ in range(_MAX_GATHER_ROUNDS):
        moved = TOKEN_GATHER_RULES.apply_to_model(model)
        if not moved:
            break
        total += moved
        ir_passes.CommonSubexpressionEliminationPass()(model)
    return total


def _dims(value: ir.Value) -> list | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else str(d) for d in value.shape]


def _ort_gelu_fusion(path: str | Path) -> int:
    """ONNX Runtime's transformer optimizer with only its GELU fusions on; the fused node count."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    for name, value in vars(options).items():
        if name.startswith("enable_") and isinstance(value, bool):
            setattr(options, name, name in ("enable_gelu", "enable_bias_gelu"))
    optimized = optimizer.optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                                         optimization_options=options, use_gpu=False)
    optimized.save_model_to_file(str(path))
    return optimized.get_fused_operator_statistics()["BiasGelu"]
