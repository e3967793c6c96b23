"""Placeholder: multi-scale deformable attention op (being written)."""


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    raise NotImplementedError


def ms_deform_attn_reference(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    raise NotImplementedError
