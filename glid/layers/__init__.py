"""GLID's custom ops (fused kernels in ``glid._C``) and their pure-PyTorch references."""

from .bifpn_fusion import fast_normalized_fusion, fast_normalized_fusion_reference
from .ms_deform_attn import ms_deform_attn, ms_deform_attn_reference

__all__ = [
    "fast_normalized_fusion",
    "fast_normalized_fusion_reference",
    "ms_deform_attn",
    "ms_deform_attn_reference",
]
