"""The text candidate `fused-dynamic`: onnxruntime's transformer optimizer (attention, LayerNorm, GELU
and bias-add fusions) on the prepared graph, then per-channel dynamic INT8 as `text._dynamic`. A graph
the optimizer cannot fuse makes it NotApplicable, recorded with its reason while the others run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgetl.console import log
from edgetl.errors import EdgetlError

# onnxruntime's dynamic (IntegerOps) registry quantizes MatMul (MatMulInteger) and a fused Attention
# (QAttention, a CPU kernel); a Gemm (the head) it first rewrites as MatMul + Add, as in `_dynamic`.
# EmbedLayerNormalization and Gather would quantize the embedding tables, float by design (see
# text.TEXT_MAX_SIZE_RATIO); SkipLayerNormalization and BiasGelu have no integer kernel.
FUSED_QUANTIZED_OPS = ["MatMul", "Attention"]
NOT_APPLICABLE = "not applicable"


class NotApplicable(EdgetlError):
    """A candidate method that cannot apply to this graph: recorded with its reason, the others run."""


def fused_dynamic(src: Path, dst: Path, texts, spec) -> dict:
    """onnxruntime's transformer optimizer on the graph, then the per-channel dynamic INT8 of
    `_dynamic`; NotApplicable when the optimizer raises or fuses nothing. Returns the settings the
    model records: the op types quantized and the fused nodes by op type."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    before = Counter(n.op_type for n in onnx.load(str(src)).graph.node)
    try:
        # opt_level 0: its Python fusions only; onnxruntime's own graph optimizations run anyway when
        # a session loads the file. num_heads and hidden_size 0: read from the graph.
        fused = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    except Exception as e:  # its pattern matching can fail in any way on a graph it was not written for
        first = (str(e).strip().splitlines() or [""])[0]
        raise NotApplicable(
            f"onnxruntime's transformer optimizer failed ({type(e).__name__}: {first})"
        ) from None
    # the optimizer's own statistics count every node of a fusable type, fused or exported as such.
    # On edgetl's exports (torch dynamo, transformers 5) LayerNorm fuses with its residual add and GELU
    # with its bias, but not Attention: the padding mask comes as a Where/And/GatherND path its
    # patterns do not list, and the head count is not a constant of the Reshape before it.
    gained = dict(sorted((Counter(n.op_type for n in fused.model.graph.node) - before).items()))
    if not gained:
        raise NotApplicable("onnxruntime's transformer optimizer fused nothing in this graph")
    log(f"  fused-dynamic: onnxruntime fused {', '.join(f'{n} {op}' for op, n in gained.items())}")
    path = dst.with_name(f"{dst.stem}.fused.onnx")
    fused.save_model_to_file(str(path))
    quantize_dynamic(
        str(path), str(dst), op_types_to_quantize=FUSED_QUANTIZED_OPS, per_channel=True,
        weight_type=QuantType.QInt8,
        # onnx's shape inference stops at the fused (com.microsoft) ops, so the MatMuls after them
        # have no inferred input type; every activation of this graph is float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )  # fmt: skip
    return {"op_types": FUSED_QUANTIZED_OPS, "fused": gained}
