"""fvcore flop handles of GLID's custom ops (one multiply-add = one flop), keyed by the name
each op has in a traced graph; pass them to ``FlopCountAnalysis.set_op_handle(**...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fvcore.nn.jit_handles import get_shape

from .ms_deform_attn import TRACED_OP_NAME as MS_DEFORM_ATTN_OP
from .ms_deform_attn import ms_deform_attn_flop_jit

__all__ = ["CUSTOM_OP_FLOP_HANDLES", "fast_fusion_flop_jit"]


def fast_fusion_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """Fast normalized fusion: one multiply-add per input element."""
    out_numel = 1
    for d in get_shape(outputs[0]):
        out_numel *= d
    num_inputs = len(list(inputs[0].node().inputs()))  # inputs[0] is the Tensor[] list
    return out_numel * num_inputs


CUSTOM_OP_FLOP_HANDLES: dict[str, Callable] = {
    "glid::fast_fusion_forward": fast_fusion_flop_jit,
    MS_DEFORM_ATTN_OP: ms_deform_attn_flop_jit,
}
