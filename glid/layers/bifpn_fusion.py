"""Placeholder: fast normalized fusion op (being written)."""


def fast_normalized_fusion(inputs, weights, eps=1e-4, activation="silu"):
    raise NotImplementedError


def fast_normalized_fusion_reference(inputs, weights, eps=1e-4, activation="silu"):
    raise NotImplementedError
