"""MDFLoss with the bundled official weights equals the authors' formula evaluated with their own pickled modules.

The authors' modules are loaded here, in the test only, with a stand-in for their unreleased `SinGAN.models` script
(the two classes as they published them in the pickle). This unpickles trusted files from the shared data folder; the
package itself never does (see test_no_unsafe_load).
"""
import re
import sys
import types
import warnings

import pytest
import torch
from torch import nn

from conftest import ROOT
from mdf_loss import MDFLoss
from mdf_loss.core import load_image, resize


def _install_singan_stub():
    "The authors' two classes, as recorded in their pickles (their forward passes, verbatim in behaviour)."
    class ConvBlock(nn.Sequential): pass
    class WDiscriminator(nn.Module):
        def forward(self, x): return self.tail(self.body(self.head(x)))
    pkg = types.ModuleType('SinGAN'); mod = types.ModuleType('SinGAN.models')
    ConvBlock.__module__ = WDiscriminator.__module__ = 'SinGAN.models'
    mod.ConvBlock, mod.WDiscriminator = ConvBlock, WDiscriminator
    pkg.models = mod
    sys.modules['SinGAN'], sys.modules['SinGAN.models'] = pkg, mod


def authors_modules(path):
    saved = {k: sys.modules.get(k) for k in ('SinGAN', 'SinGAN.models')}
    _install_singan_stub()
    try:
        with warnings.catch_warnings():   # expected: the stand-in classes have no source file, and torch's own changed
            warnings.filterwarnings('ignore', "Couldn't retrieve source code", UserWarning)
            warnings.filterwarnings('ignore', category=torch.serialization.SourceChangeWarning)
            return [d.eval() for d in torch.load(path, map_location='cpu', weights_only=False)]
    finally:   # leave sys.modules as it was: other tests install their own stand-ins
        for k, v in saved.items():
            if v is None: sys.modules.pop(k, None)
            else: sys.modules[k] = v


def reference_loss(ds, x, y, num_scales):
    "The reference: per image, sum over D_k (k < num_scales) and taps [head, body, tail] of mean((f(x)-f(y))^2)."
    total = 0
    with torch.no_grad():
        for d in ds[:num_scales]:
            fx, fy = [], []
            for inp, feats in ((x, fx), (y, fy)):
                h = d.head(inp); b = d.body(h); feats += [h, b, d.tail(b)]
            total = total + sum(((a - c) ** 2).mean(dim=(1, 2, 3)) for a, c in zip(fx, fy))
    return total


@pytest.fixture(scope='module')
def images(data_dir):
    x = torch.cat([resize(load_image(data_dir / 'mdf_reference' / 'i10.png'), (96, 128)),
                   resize(load_image(data_dir / 'mdf_reference' / 'test.png'), (96, 128))]).clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize('name,file', [('official-sisr', 'Ds_SISR.pth'), ('official-jpeg', 'Ds_JPEG.pth')])
def test_equals_reference_formula(name, file, images, data_dir):
    ds = authors_modules(data_dir / 'mdf_official' / file)
    x, y = images
    for n in range(1, len(ds) + 1):
        crit = MDFLoss.from_pretrained(name, num_scales=n, reduction='none')
        with torch.no_grad(): ours = crit(x, y)
        ref = reference_loss(ds, x, y, n)
        assert torch.allclose(ours, ref, rtol=1e-6, atol=0), (n, ours, ref)
        mean = MDFLoss.from_pretrained(name, num_scales=n)(x, y)
        assert torch.allclose(mean, ref.mean(), rtol=1e-6, atol=0)


def test_no_unsafe_load():
    "No code in the package unpickles with weights_only=False or calls pickle.load on a file."
    for py in (ROOT / 'mdf_loss').rglob('*.py'):
        src = py.read_text()
        assert not re.search(r'weights_only\s*=\s*False', src), py
        assert not re.search(r'\bpickle\.loads?\(', src), py
        assert not re.search(r'torch\.load\(', src) or 'weights_only=True' in src, py
