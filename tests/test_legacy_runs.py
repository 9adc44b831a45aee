"""Runs and weight files written before phase 1 adopted SinGAN's arithmetic still load and resume.

`fixtures/legacy_run` was written by mdf_loss 0.1.0 (before the change): a two-scale denoising run (8-channel
networks, 3 iterations per scale, seed 3) stopped after scale 0, and `expected_loss.safetensors`, the loss file the
same run wrote when it was not stopped.
"""
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


def test_old_run_resumes_to_the_weights_it_would_have_had(tmp_path, one_thread):
    run = tmp_path/'run'
    shutil.copytree(LEGACY, run)
    (run/'expected_loss.safetensors').unlink()
    cfg = TrainConfig.from_json((run/'config.json').read_text())
    loss = train(cfg, run, resume=True, progress=False)
    got, want = MDFLoss.load(loss), MDFLoss.load(LEGACY/'expected_loss.safetensors')
    assert got.meta['scale_sizes'] == want.meta['scale_sizes'] == [[25, 32], [31, 40]]
    for a, b in zip(got.discriminators, want.discriminators):
        for (n, t), u in zip(a.state_dict().items(), b.state_dict().values()): assert torch.equal(t, u), n


def test_resuming_an_old_run_with_new_settings_says_how(tmp_path, one_thread):
    run = tmp_path/'run'
    shutil.copytree(LEGACY, run)
    cfg = TrainConfig.from_json((run/'config.json').read_text())
    with pytest.raises(ValueError, match="arithmetic='v0'"):
        train(TrainConfig(**{**cfg.to_dict(), 'arithmetic': 'singan'}), run, resume=True, progress=False)
