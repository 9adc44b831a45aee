"""A task the package does not ship, registered once in the user's own module, is taken by every tool with no other edit:
`mdf-loss train`, `mdf-loss experiment`, the sensitivity benchmark and the distortion explorer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import QUIET, ROOT, run_cli
from mdf_loss import MDFLoss
from mdf_loss.core import bundled_image_path, load_image, to_pil

MODULE = '''
import torch
from mdf_loss.distortions import Distortion
from mdf_loss.tasks import Strength, TaskSpec, register_task

def vignette(x, strength):
    "Darken x towards its corners by up to `strength`."
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
    return x*(1 - strength*((xx**2 + yy**2)/2).to(x))

def make(strength=0.4): return Distortion('vignette', {'strength': float(strength)}, vignette)

register_task(TaskSpec('vignette', 'vignetting', make, Strength('strength', 0.4, 0, 1), 'residual',
                       ladder=(0.1, 0.3, 0.6, 0.9), widget_steps=tuple(i/10 for i in range(1, 11)), variants=(0.4,),
                       variant_label='v{}'), replace=True)
'''

ENV = QUIET


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    "A folder holding the user's module, training and test images cut from the bundled photo."
    d = tmp_path_factory.mktemp('vignette')
    (d/'mytask.py').write_text(textwrap.dedent(MODULE))
    photo = load_image(bundled_image_path())
    for name, size, spots in [('train', 64, [(0, 0), (200, 300)]), ('test', 48, [(100, 100), (250, 150)])]:
        (d/name).mkdir()
        for i, (t, l) in enumerate(spots): to_pil(photo[..., t:t + size, l:l + size]).save(d/name/f'{name}{i}.png')
    return d


def mdf_loss(*args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    r = run_cli('--import', 'mytask', *args, cwd=cwd, timeout=timeout, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope='module')
def trained(workdir) -> Path:
    "`mdf-loss train --task vignette`: two scales, two iterations each."
    mdf_loss('train', '--task', 'vignette', '--strength', '0.5', '--max-size', '36', '--iters', '2', '--out', 'run', '--threads', '1',
             '--no-progress', cwd=workdir)
    return workdir/'run'/'loss.safetensors'


def test_train_takes_the_registered_task(trained):
    loss = MDFLoss.load(trained)
    assert loss.meta['task'] == 'vignette' and loss.meta['distortion'] == {'name': 'vignette', 'params': {'strength': 0.5}}
    assert len(loss.discriminators) == 2
    assert '--strength 0.5' in loss.meta['provenance']['command']


def test_experiment_takes_the_registered_task(workdir, trained):
    mdf_loss('experiment', '--task', 'vignette', '--losses', 'l1,mdf', '--mdf-weights', trained, '--train', 'train', '--test', 'test',
             '--preset', 'smoke', '--out', 'exp', '--threads', '1', '--no-progress', cwd=workdir)
    res = json.loads((workdir/'exp'/'results.json').read_text())
    assert res['task'] == 'vignette' and [r['run'] for r in res['runs']] == ['l1', 'mdf']
    assert res['config']['variants'] == {'v0.4': 0.4} and res['config']['steps'] == 2
    assert 'mdf' in res['runs'][1]['eval']['test']['mean']


def test_sensitivity_benchmark_ranks_the_registered_task(workdir, trained, data_dir):
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'sensitivity.py'), '--import', 'mytask', '--tasks', 'vignette',
                        '--losses', str(trained), '--per-set', '1', '--size', '48', '--no-specificity'],
                       capture_output=True, text=True, cwd=workdir, timeout=600, env={**ENV, 'MDF_LOSS_DATA': str(data_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    rows = out['sensitivity'][str(trained)]['vignette']['per_image']
    assert len(rows) == 2 and all(len(row['values']) == 4 for row in rows)


def test_distortion_explorer_shows_the_registered_task(workdir, trained, monkeypatch, restore_registries):
    pytest.importorskip('ipywidgets')
    monkeypatch.syspath_prepend(str(workdir))
    monkeypatch.delitem(sys.modules, 'mytask', raising=False)
    import importlib
    importlib.import_module('mytask')
    from mdf_loss.widgets import distortion_explorer, widget_tasks
    from mdf_loss.tasks import get_task
    assert widget_tasks()['vignetting'] == 'vignette'
    ex = distortion_explorer(trained, size=48, distortion='vignette', strength=5)
    try:
        assert ex.parameter.value == 'vignetting, strength 0.5'
        assert torch.equal(ex.distorted, get_task('vignette').distort(ex.clean, 0.5))
        assert ex.loss_value > 0
    finally: ex.close()
