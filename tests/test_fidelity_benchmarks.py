"""benchmarks/phase1_fidelity.py and benchmarks/task_specificity.py run at tiny sizes and compute what they claim."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mdf_loss import MDFLoss
from mdf_loss.sensitivity import benchmark_crops, psnr
from mdf_loss.tasks import get_task
from mdf_loss.weights import pretrained_path
from conftest import run_benchmark as run_script


def run(script: str, *args) -> dict: return run_script(script, *args, timeout=600)

def test_phase1_fidelity_curves_and_profiles(tmp_path, data_dir):
    args = ['--losses', 'denoise,official-jpeg', '--anchors', 'L1', '--steps', '3', '--size', '24x32', '--per-set', '1',
            '--crop', '48', '--threads', '1', '--data', str(data_dir), '--cache', str(tmp_path / 'cache'), '--out', str(tmp_path / 'fid')]
    out = run('phase1_fidelity.py', *args)
    px = out['pixel']
    assert set(px['curves']) == {'denoise', 'official-jpeg', 'L1'}
    # the start is the centre crop of the authors' own noise, the target the same crop of their photo
    start = torch.from_numpy(np.load(data_dir / 'mdf_reference' / 'noisy_start.npy'))[..., 180:204, 240:272]
    from mdf_loss.core import load_image
    target = load_image(data_dir / 'mdf_reference' / 'i10.png')[..., 180:204, 240:272]
    for rec in px['curves'].values():
        assert len(rec['curve']) == 3 + 1
        assert rec['curve'][0] == pytest.approx(psnr(start, target), abs=1e-3)
        assert rec['summary']['end'] == rec['curve'][3] and rec['summary']['best'] == max(rec['curve'])
    assert px['curves']['L1']['curve'][-1] > px['curves']['L1']['curve'][0]  # three Adam steps under L1 do improve
    assert {'MDF', 'L1', 'L2'} <= set(px['published'])
    assert len(px['published']['MDF']['curve']) == 500 and px['published']['MDF']['curve'][0] == pytest.approx(9.4208, abs=1e-3)
    assert out['losses']['official-jpeg']['owner'] == 'authors' and out['losses']['denoise']['owner'] == 'ours'
    # the profile: one share per used discriminator, summing to 1 per image, equal to the terms computed here
    prof = out['profile']
    crops = benchmark_crops(data_dir / 'benchmarks', per_set=1, size=48)
    assert out['profile_image_names'] == list(crops)
    loss = MDFLoss.from_pretrained('denoise')
    for label, per_task in prof['losses'].items():
        for task, r in per_task.items():
            assert len(r['share_mean']) == out['losses'][label]['used']
            assert all(s == pytest.approx(1, abs=1e-5) for s in r['share_sum_per_image'])
    name, x = next(iter(crops.items()))
    per_scale = loss.terms(get_task('jpeg').distort(x, None, 0), x)[0].double().sum(1)
    assert prof['losses']['denoise']['jpeg']['per_image'][name] == pytest.approx((per_scale / per_scale.sum()).tolist(), abs=1e-4)
    assert set(prof['specificity']['loss_over_mse']) == {'denoise', 'official-jpeg'}
    for f in ('fid.json', 'fid.md', 'fid.png'): assert (tmp_path / f).is_file()
    md = (tmp_path / 'fid.md').read_text()
    assert 'Where ours behaves like theirs' in md and out['command'] in md
    assert json.loads((tmp_path / 'fid.json').read_text())['pixel']['curves']['L1']['curve'] == px['curves']['L1']['curve']
    again = run('phase1_fidelity.py', *args[:-2], '--parts', 'pixel')  # the curves come from the cache the second time
    assert all(r['cached'] for r in again['pixel']['curves'].values())
    assert {k: r['curve'] for k, r in again['pixel']['curves'].items()} == {k: r['curve'] for k, r in px['curves'].items()}


def test_task_specificity_smoke_matrix(tmp_path, data_dir):
    args = ['--preset', 'smoke', '--seeds', '0', '--max-test-images', '1', '--max-train-images', '2', '--authors', '',
            '--columns', 'l1,ours-denoise,ours-jpeg,ours-sisr', '--threads', '1', '--data', str(data_dir),
            '--runs', str(tmp_path / 'runs'), '--out', str(tmp_path / 'ts')]
    out = run('task_specificity.py', *args)
    assert not out['missing'] and not out['failed'] and len(out['experiments']) == 3 * 4
    t = out['table']
    keys = {'denoise': ['CSet14', 'CBSD68'], 'jpeg': ['CSet14/q10', 'CSet14/q20', 'CBSD68/q10', 'CBSD68/q20'], 'sisr': ['CSet14', 'CBSD68']}
    for task in ('denoise', 'jpeg', 'sisr'):
        assert set(t[task]) == {'l1', 'ours-denoise', 'ours-jpeg', 'ours-sisr'}  # the 3 x 3 matrix and L1
        for col, per_key in t[task].items():
            assert sorted(per_key) == sorted(keys[task])
            for key, ms in per_key.items():
                assert set(ms) == {'psnr', 'ssim', 'haarpsi'} and all(c['n'] == 1 for c in ms.values())
                if col != 'l1':
                    assert ms['psnr']['vs_l1']['mean'] == pytest.approx(ms['psnr']['mean'] - t[task]['l1'][key]['psnr']['mean'])
    rows = out['diagonal']['ours']
    assert len(rows) == 3 * 2 * 3 and all(r['verdict'] in ('wins', 'within spread', 'loses') for r in rows)
    assert {r['own'] for r in rows} == {'ours-denoise', 'ours-jpeg', 'ours-sisr'}
    assert out['diagonal_tally']['ours']['cells'] == 18
    # the experiments' own files: the finetune protocol, the named network and the loss file of the column
    res = json.loads((Path(next(e['dir'] for e in out['experiments'] if e['column'] == 'ours-sisr' and e['task'] == 'sisr')) / 'results.json').read_text())
    assert res['config']['protocols'] == ['finetune'] and res['config']['networks'] == ['srresnet']
    assert res['experiment_config']['mdf_path'] == str(pretrained_path('sisr'))
    md = (tmp_path / 'ts.md').read_text()
    assert 'Does the diagonal win beyond the seed spread?' in md and out['command'] in md
    # a second call trains nothing: every folder is done; --aggregate-only rebuilds the same tables
    again = run('task_specificity.py', *args[:-2], '--aggregate-only')
    assert again['table'] == t and not again['log']
    rerun = run('task_specificity.py', *args[:-2])
    assert {r['status'] for r in rerun['log']} == {'done before'}


def _fake_results(folder: Path, task: str, network: str, run_name: str, scores: dict):
    "A results.json as mdf-loss experiment writes it, with `scores` = {set key: (psnr, ssim, haarpsi)}."
    tables = {network: {k: [{'run': 'input', 'mean': {'psnr': 20., 'ssim': .5, 'haarpsi': .6}},
                            {'run': run_name, 'mean': {'psnr': p, 'ssim': s, 'haarpsi': h}}] for k, (p, s, h) in scores.items()}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'results.json').write_text(json.dumps({'command': 'mdf-loss experiment (fake)', 'date': 'today', 'seconds': 1.0,
                                                     'machine': {'torch_threads': 1}, 'tables': tables}))


def test_task_specificity_verdict_from_fabricated_results(tmp_path):
    "The diagonal verdict: wins only when the ranges over seeds do not overlap; loses when a rival's worst seed is better."
    sha = {t: hashlib.sha256(pretrained_path(t).read_bytes()).hexdigest()[:12] for t in ('denoise', 'jpeg', 'sisr')}
    root = tmp_path / 'runs' / 'quick_stepspreset_test10'
    net = {'denoise': 'dncnn', 'jpeg': 'dncnn', 'sisr': 'srresnet'}
    keys = {'denoise': ['CSet14', 'CBSD68'], 'jpeg': ['CSet14/q10', 'CBSD68/q10'], 'sisr': ['CSet14', 'CBSD68']}
    # denoise: own loss +1 dB over the rivals, seed noise 0.1 (wins); jpeg: own +0.05 with seed noise 0.2 (within
    # spread); sisr: own 1 dB worse (loses)
    offset = {'denoise': 1.0, 'jpeg': 0.05, 'sisr': -1.0}
    for task in ('denoise', 'jpeg', 'sisr'):
        for seed in (0, 1, 2):
            noise = (0.2 if task == 'jpeg' else 0.1) * (seed - 1)
            _fake_results(root / task / f'seed{seed}' / 'l1', task, net[task], 'l1', {k: (25 + noise, .7, .8) for k in keys[task]})
            for col in ('denoise', 'jpeg', 'sisr'):
                d = (offset[task] if col == task else 0.0) + (noise if col == task else -noise)
                _fake_results(root / task / f'seed{seed}' / f'ours-{col}-{sha[col]}', task, net[task], 'mdf',
                              {k: (25 + d, .7 + d / 100, .8 + d / 100) for k in keys[task]})
    out = run('task_specificity.py', '--aggregate-only', '--authors', '', '--columns', 'l1,ours-denoise,ours-jpeg,ours-sisr',
              '--data', str(tmp_path), '--runs', str(tmp_path / 'runs'), '--out', str(tmp_path / 'v'))
    verdicts = {(r['task'], r['measure']): r['verdict'] for r in out['diagonal']['ours']}
    assert {v for (t, _), v in verdicts.items() if t == 'denoise'} == {'wins'}
    assert {v for (t, _), v in verdicts.items() if t == 'jpeg'} == {'within spread'}
    assert {v for (t, _), v in verdicts.items() if t == 'sisr'} == {'loses'}
    assert out['diagonal_tally']['ours'] == {'wins': 6, 'within spread': 6, 'loses': 6, 'cells': 18}
    c = out['table']['denoise']['ours-denoise']['CSet14']['psnr']
    assert c['mean'] == pytest.approx(26.0) and c['min'] == pytest.approx(25.9) and c['max'] == pytest.approx(26.1)
    assert c['vs_l1']['per_seed'] == {'0': pytest.approx(1.0), '1': pytest.approx(1.0), '2': pytest.approx(1.0)}
    assert not out['diagonal']['authors']  # the authors' columns were not asked for
