"""Sine position features against closed form, computed by hand with ``math``."""

import math

import pytest
import torch

from glid.modeling.position_encoding import PositionEmbeddingSine, sine_embed_points


def by_hand(x: float, y: float, num_feats: int, temperature: float = 10000.0) -> list[float]:
    """DETR's normalized sine features of a point in [0, 1]^2: for each coordinate c (y first,
    then x) and k = 0 .. num_feats - 1, with t = 2 pi c / temperature^(2 floor(k / 2) / F):
    sin(t) for even k, cos(t) for odd k."""
    feats = []
    for c in (y, x):
        for k in range(num_feats):
            t = 2 * math.pi * c / temperature ** (2 * (k // 2) / num_feats)
            feats.append(math.sin(t) if k % 2 == 0 else math.cos(t))
    return feats


POINTS = [(0.0, 0.0), (0.25, 0.75), (0.1, 0.6), (1.0, 0.5), (0.9, 0.05)]


@pytest.mark.parametrize("num_feats,temperature", [(4, 10000.0), (6, 10000.0), (8, 20.0)])
def test_sine_embed_points_closed_form(num_feats, temperature):
    points = torch.tensor(POINTS)
    got = sine_embed_points(points, num_feats, temperature)
    assert got.shape == (len(POINTS), 2 * num_feats) and got.dtype == torch.float32
    want = torch.tensor([by_hand(x, y, num_feats, temperature) for x, y in POINTS])
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_sine_embed_points_four_features_by_hand():
    # F = 4, T = 10000: the frequencies are 1 and 1/100, so for (x, y) = (0.25, 0.75) the
    # y features are sin(3 pi / 2), cos(3 pi / 2), sin(3 pi / 200), cos(3 pi / 200), then x's.
    got = sine_embed_points(torch.tensor([[0.25, 0.75]]), 4)[0]
    s, c = math.sin, math.cos
    want = [-1.0, 0.0, s(3 * math.pi / 200), c(3 * math.pi / 200)]
    want += [1.0, 0.0, s(math.pi / 200), c(math.pi / 200)]
    torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=1e-6)


def test_sine_embed_points_any_leading_shape_and_dtype():
    points = torch.rand(2, 3, 5, 2, dtype=torch.float64)
    got = sine_embed_points(points, 6)
    assert got.shape == (2, 3, 5, 12) and got.dtype == torch.float32
    torch.testing.assert_close(got[1, 2, 4], torch.tensor(by_hand(*points[1, 2, 4].tolist(), 6)))


def test_map_features_are_the_pixel_centres_features():
    """Pixel (i, j) of an H x W map has the features of ((j + 0.5) / W, (i + 0.5) / H)."""
    pe = PositionEmbeddingSine(num_feats=4, temperature=100.0)
    x = torch.zeros(2, 7, 2, 3, dtype=torch.float64)  # B = 2, H = 2, W = 3
    got = pe(x)
    assert got.shape == (2, 8, 2, 3) and got.dtype == torch.float64
    for i in range(2):
        for j in range(3):
            want = torch.tensor(by_hand((j + 0.5) / 3, (i + 0.5) / 2, 4, 100.0), dtype=x.dtype)
            torch.testing.assert_close(got[0, :, i, j], want, rtol=0, atol=2e-6)
    assert torch.equal(got[0], got[1])


def test_same_point_same_features_at_every_scale():
    pe = PositionEmbeddingSine(num_feats=8)
    coarse, fine = pe(torch.zeros(1, 1, 2, 2)), pe(torch.zeros(1, 1, 6, 6))
    # The centre of coarse pixel (0, 1) is (0.75, 0.25): fine pixel (1, 4) has centre
    # (4.5 / 6, 1.5 / 6) = (0.75, 0.25) too.
    torch.testing.assert_close(coarse[0, :, 0, 1], fine[0, :, 1, 4])


def test_odd_num_feats_is_an_error():
    with pytest.raises(ValueError, match="num_feats must be even, got 5"):
        PositionEmbeddingSine(num_feats=5)


def test_defaults_are_detr_s():
    """Default temperature 10000 and, for maps, 128 features per coordinate. F = 20 puts a
    frequency at 10000^-0.1, where a temperature off by 1 moves a feature by ~1e-5."""
    points = torch.tensor([[0.9, 0.35], [0.55, 0.95]])
    got = sine_embed_points(points, 20)
    want = torch.tensor([by_hand(x, y, 20) for x, y in points.tolist()])
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)
    pe = PositionEmbeddingSine()
    assert (pe.num_feats, pe.temperature) == (128, 10000.0)
    got = pe(torch.zeros(1, 1, 2, 3))
    assert got.shape == (1, 256, 2, 3)
    want = torch.tensor(by_hand(2.5 / 3, 1.5 / 2, 128))
    torch.testing.assert_close(got[0, :, 1, 2], want, rtol=0, atol=2e-6)


def test_map_features_follow_the_map_dtype():
    got = PositionEmbeddingSine(num_feats=4)(torch.zeros(1, 3, 2, 2, dtype=torch.bfloat16))
    assert got.dtype == torch.bfloat16
