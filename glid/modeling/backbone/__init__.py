from .swin import D2SwinTransformer, build_glid_swin_backbone

__all__ = ["D2SwinTransformer", "build_glid_swin_backbone"]
