"""Phase 1's pyramid against SinGAN's own arithmetic.

The helpers below restate, step by step, what SinGAN's `adjust_scales2image`, `creat_reals_pyramid` and the resizer
of its `imresize.py` compute (written for this test from a reading of that code, with numpy as SinGAN uses it). The
package computes the same things its own way; the two must agree exactly.
"""
import math

import numpy as np
import pytest
import torch

from mdf_loss.pyramid import imresize, resize_matrix, singan_pyramid


def singan_levels(h, w, min_size, max_size, factor_init):
    "Level sizes as SinGAN derives them: step count from the original image, finest level, factor, then each level."
    num_scales = math.ceil(math.log(math.pow(min_size/min(h, w), 1), factor_init)) + 1
    above = math.ceil(math.log(min([max_size, max([h, w])])/max([h, w]), factor_init))
    stop = num_scales - above
    scale1 = min(max_size/max([h, w]), 1)
    finest = np.uint(np.ceil(np.array([h, w, 3])*np.array([scale1, scale1, 1])))  # the resizer's output shape
    factor = math.pow(min_size/min(finest[0], finest[1]), 1/stop)
    levels = []
    for i in range(0, stop + 1, 1):
        scale = math.pow(factor, stop - i)
        shape = np.uint(np.ceil(np.array(finest)*np.array([scale, scale, 1])))
        levels.append((int(shape[0]), int(shape[1])))
    return levels, factor, scale1


SIZES = [  # (h, w): landscape, portrait, square, below max_size, just above min_size, long and thin, large
    (400, 512), (512, 400), (250, 250), (256, 256), (249, 251), (100, 100), (64, 64), (48, 64), (64, 48), (96, 128),
    (128, 96), (26, 26), (26, 40), (30, 31), (25, 500), (37, 1000), (333, 777), (777, 333), (1080, 1920), (1920, 1080),
    (3000, 4000), (481, 321), (321, 481), (200, 120), (251, 26),
]
SETTINGS = [(25, 250, 0.75), (25, 128, 0.75), (25, 64, 0.75), (18, 250, 0.75), (25, 250, 0.5), (11, 96, 0.8)]


@pytest.mark.parametrize('min_size, max_size, factor', SETTINGS)
@pytest.mark.parametrize('h, w', SIZES)
def test_levels_equal_singans(h, w, min_size, max_size, factor):
    short_after = min(math.ceil(h*min(max_size/max(h, w), 1)), math.ceil(w*min(max_size/max(h, w), 1)))
    if min(h, w) < min_size or short_after < min_size:
        with pytest.raises(ValueError, match='smaller than the coarsest|too elongated'): singan_pyramid(h, w, min_size, max_size, factor)
        return
    levels, f, top = singan_levels(h, w, min_size, max_size, factor)
    plan = singan_pyramid(h, w, min_size, max_size, factor)
    assert plan.sizes == levels
    assert plan.factor == f and plan.top == top


def test_counts_levels_from_the_original_image():
    "An image already below max_size keeps the extra level that SinGAN's step count implies."
    assert len(singan_pyramid(64, 64).sizes) == 6 and len(singan_pyramid(400, 512).sizes) == 9


def singan_axis_weights(n_in, n_out, scale):
    "One axis of SinGAN's resizer, as its `contributions` computes it (cubic kernel, antialiased when shrinking)."
    def cubic(x):
        ax = np.abs(x)
        return (1.5*ax**3 - 2.5*ax**2 + 1)*(ax <= 1) + (-0.5*ax**3 + 2.5*ax**2 - 4*ax + 2)*((1 < ax) & (ax <= 2))
    aa = scale < 1
    kernel = (lambda t: scale*cubic(scale*t)) if aa else cubic
    width = 4.0*(1.0/scale if aa else 1.0)
    centres = 1.0*np.arange(1, n_out + 1)/scale + 0.5*(1 - 1.0/scale)
    left = np.floor(centres - width/2)
    with np.errstate(invalid='ignore'):  # negative indices become huge unsigned ones, as in SinGAN
        fov = np.squeeze(np.uint(np.expand_dims(left, axis=1) + np.arange(np.ceil(width) + 2) - 1))
    weights = kernel(1.0*np.expand_dims(centres, axis=1) - fov - 1)
    sums = np.sum(weights, axis=1)
    sums[sums == 0] = 1.0
    weights = weights/np.expand_dims(sums, axis=1)
    mirror = np.uint(np.concatenate((np.arange(n_in), np.arange(n_in - 1, -1, step=-1))))
    fov = mirror[np.mod(fov, mirror.shape[0])]
    dense = np.zeros((n_out, n_in))
    for o in range(n_out):
        for t in range(weights.shape[1]): dense[o, fov[o, t]] += weights[o, t]
    return dense


@pytest.mark.parametrize('n_in, scale', [(250, 0.7731), (196, 0.7731), (32, 1/0.7731), (25, 1/0.75), (100, 0.5), (41, 0.25),
                                         (13, 1.7), (64, 0.8286), (7, 0.3)])
def test_resize_matrix_equals_singans(n_in, scale):
    n_out = int(np.uint(np.ceil(n_in*scale)))
    np.testing.assert_allclose(resize_matrix(n_in, n_out, scale), singan_axis_weights(n_in, n_out, scale), rtol=0, atol=1e-13)


def test_imresize_is_separable_and_sized_like_singan():
    x = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = imresize(x, 0.61)
    assert y.shape == (2, 3, math.ceil(37*0.61), math.ceil(53*0.61))
    mh, mw = (torch.from_numpy(singan_axis_weights(n, math.ceil(n*0.61), 0.61)) for n in (37, 53))
    torch.testing.assert_close(y, mh @ x @ mw.T, rtol=0, atol=1e-12)
