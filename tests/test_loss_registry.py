"""A loss the package does not ship, registered once in the user's own module, is taken by every tool with no other
edit: `mdf-loss experiment`, the optimisation race widget and the sensitivity benchmark."""
from __future__ import annotations

import importlib
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
from mdf_loss import baselines
from mdf_loss.core import bundled_image_path, load_image, to_pil

MODULE = '''
from mdf_loss.baselines import register_loss
from mdf_loss.contract import ImageLoss

class CharbonnierLoss(ImageLoss):
    "sqrt((output - target)^2 + eps^2), averaged over each image."
    def __init__(self, reduction='mean', eps=1e-3):
        super().__init__(reduction); self.eps = eps
    def per_image(self, output, target):
        return ((output - target).square() + self.eps**2).sqrt().flatten(1).mean(1)

register_loss('charbonnier', CharbonnierLoss, summary='smooth L1', replace=True)
'''

ENV = QUIET


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> Path:
    "A folder holding the user's module, and training and test images cut from the bundled photo."
    d = tmp_path_factory.mktemp('charbonnier')
    (d/'myloss.py').write_text(textwrap.dedent(MODULE))
    photo = load_image(bundled_image_path())
    for name, size, spots in [('train', 64, [(0, 0), (200, 300)]), ('test', 48, [(100, 100), (250, 150)])]:
        (d/name).mkdir()
        for i, (t, l) in enumerate(spots): to_pil(photo[..., t:t + size, l:l + size]).save(d/name/f'{name}{i}.png')
    return d


@pytest.fixture
def registered(workdir, monkeypatch):
    "The user's module imported in this process; the registry is put back as it was afterwards."
    before = dict(baselines.LOSSES)
    monkeypatch.syspath_prepend(str(workdir))
    sys.modules.pop('myloss', None)
    importlib.import_module('myloss')
    yield 'charbonnier'
    for name in [n for n in baselines.LOSSES if n not in before]: baselines.unregister_loss(name)
    sys.modules.pop('myloss', None)
    assert baselines.LOSSES == before


def test_experiment_takes_the_registered_loss(workdir):
    r = run_cli('--import', 'myloss', 'experiment', '--task', 'denoise', '--losses', 'l1,charbonnier,l1+0.5*charbonnier',
                '--train', 'train', '--test', 'test', '--preset', 'smoke', '--out', 'exp', '--threads', '1',
                '--no-progress', cwd=workdir, env=ENV)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((workdir/'exp'/'results.json').read_text())
    assert [x['run'] for x in res['runs']] == ['l1', 'charbonnier', 'l1+0.5*charbonnier']
    assert all(x['eval']['test']['mean'] for x in res['runs'])


def test_unknown_loss_lists_the_registry(workdir):
    r = run_cli('experiment', '--task', 'denoise', '--losses', 'charbonnier', '--train', 'train', '--test', 'test',
                '--preset', 'smoke', '--out', 'exp2', cwd=workdir, env=ENV)
    assert r.returncode == 2 and "unknown loss 'charbonnier'; registered: l1, l2," in r.stderr, r.stderr
    assert not (workdir/'exp2'/'results.json').exists()


def test_race_widget_takes_the_registered_loss(registered):
    pytest.importorskip('ipywidgets')
    from mdf_loss.monitors import optimisation_race
    race = optimisation_race({'Charbonnier': registered, 'L1': 'l1'}, size=32, steps=3)
    try:
        race.run(3)
        curves = race.curves_data
        assert len(curves['Charbonnier']) == 4 and curves['Charbonnier'][-1] > curves['Charbonnier'][0]
    finally: race.close()


def test_sensitivity_benchmark_takes_the_registered_loss(workdir, data_dir):
    r = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'sensitivity.py'), '--import', 'myloss', '--tasks', 'denoise',
                        '--losses', 'charbonnier,l1', '--per-set', '1', '--size', '48', '--no-specificity'],
                       capture_output=True, text=True, cwd=workdir, timeout=600, env={**ENV, 'MDF_LOSS_DATA': str(data_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)['sensitivity']['charbonnier']['denoise']['per_image']
    assert len(rows) == 2 and all(row['spearman'] > 0.5 for row in rows)


def test_registry_is_restored(registered):
    assert 'charbonnier' in baselines.LOSSES and baselines.get_loss('charbonnier').name == 'charbonnier'
