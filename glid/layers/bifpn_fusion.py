"""Placeholder: fast normalized fusion op (being written)."""

import torch


def fast_normalized_fusion_reference(inputs, weights, eps=1e-4, activation="silu"):
    w = torch.relu(weights)
    w = w / (w.sum() + eps)
    out = sum(wi * x for wi, x in zip(w, inputs))
    return torch.nn.functional.silu(out) if activation == "silu" else out


fast_normalized_fusion = fast_normalized_fusion_reference
