"""Runs and weight files written before phase 1 adopted SinGAN's arithmetic still load and resume.

`fixtures/legacy_run` was written by mdf_loss 0.1.0 (before the change): a two-scale denoising run (8-channel
networks, 3 iterations per scale, seed 3) stopped after scale 0, and `expected_loss.safetensors`, the loss file the
same run wrote when it was not stopped.

Resuming reproduces that file bit for bit only on the kind of CPU that wrote it. Elsewhere the float32 round-off of
another sgemm kernel differs in the last bits, and Adam magnifies it where a gradient is almost zero: the convolution
biases that feed a BatchNorm, whose gradient is zero up to round-off, take lr-sized steps of arbitrary sign. So the
test compares what can be compared exactly (the pyramid, and scale 0, which is read back from the checkpoint) byte
for byte, and the scale trained after the resume by what it computes: its features on random images, to a tolerance
that a run with another seed misses by a factor of more than 200.
"""
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from mdf_loss.adversarial import TrainConfig, train
from mdf_loss.loss import MDFLoss

LEGACY = Path(__file__).parent/'fixtures'/'legacy_run'


@pytest.fixture
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_old_config_reads_as_v0():
    cfg = TrainConfig.from_json((LEGACY/'config.json').read_text())
    assert cfg.arithmetic == 'v0' and TrainConfig().arithmetic == 'singan'


def feature_gap(a: MDFLoss, b: MDFLoss, k: int) -> float:
    "Largest difference between the scale-`k` features of `a` and `b` on random images, relative to `b`'s largest."
    x = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    return max(((fa - fb).abs().max()/fb.abs().max()).item() for fa, fb in zip(a.features(x, k), b.features(x, k)))


def test_old_run_resumes_to_the_weights_it_would_have_had(tmp_path, one_thread):
    run = tmp_path/'run'
    shutil.copytree(LEGACY, run)
    (run/'expected_loss.safetensors').unlink()
    cfg = TrainConfig.from_json((run/'config.json').read_text())
    got = MDFLoss.load(train(cfg, run, resume=True, progress=False))
    want = MDFLoss.load(LEGACY/'expected_loss.safetensors')
    assert got.meta['scale_sizes'] == want.meta['scale_sizes'] == [[25, 32], [31, 40]]
    for (n, t), u in zip(got.discriminators[0].state_dict().items(), want.discriminators[0].state_dict().values()):
        assert torch.equal(t, u), f'scale 0 {n}: read back from the checkpoint, so it must match bit for bit'
    for (n, t), u in zip(got.discriminators[1].state_dict().items(), want.discriminators[1].state_dict().values()):
        if n.endswith('weight'): assert torch.allclose(t, u, rtol=0, atol=1e-6), f'scale 1 {n}'
    assert feature_gap(got, want, 0) == 0
    assert feature_gap(got, want, 1) < 1e-2  # 0.3% measured across CPU kinds; the same CPU gives 0
    # the tolerance tells runs apart: the same old run with another seed is far outside it
    other = MDFLoss.load(train(dataclasses.replace(cfg, seed=cfg.seed + 1), tmp_path/'other', progress=False))
    assert feature_gap(other, want, 1) > 0.5


def test_resuming_an_old_run_with_new_settings_says_how(tmp_path, one_thread):
    run = tmp_path/'run'
    shutil.copytree(LEGACY, run)
    cfg = TrainConfig.from_json((run/'config.json').read_text())
    with pytest.raises(ValueError, match="arithmetic='v0'"):
        train(TrainConfig(**{**cfg.to_dict(), 'arithmetic': 'singan'}), run, resume=True, progress=False)
