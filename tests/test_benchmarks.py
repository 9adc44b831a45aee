"""The benchmark scripts run and compute what they claim, at tiny sizes (their recorded outputs are in benchmarks/results)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / 'benchmarks'


def run(script: str, *args, timeout: int = 300) -> dict:
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_loss_speed_compares_exact_with_the_reference_in_one_process(tmp_path):
    out = run('loss_speed.py', '--configs', '1x32', '--repeats', '1', '--threads', '1', '--no-memory',
              '--methods', 'reference,exact,exact-scales4,vgg16', '--out', str(tmp_path / 'speed.json'))
    res = out['configs']['1x32']
    assert set(res) == {'reference', 'exact', 'exact-scales4', 'vgg16'}
    assert res['exact']['value_rel_diff_vs_reference'] < 1e-5  # the exact mode is the reference formula
    assert res['exact-scales4']['value_rel_diff_vs_reference'] > 1e-3  # fewer taps is another loss
    for m, r in res.items():
        assert r['median_s'] > 0 and r['speedup_vs_reference'] == pytest.approx(res['reference']['median_s'] / r['median_s'])
        assert r['cost_vs_vgg16'] == pytest.approx(r['median_s'] / res['vgg16']['median_s'])
    assert json.loads((tmp_path / 'speed.json').read_text()) == out


def _results(task: str, rows: dict, protocol: str = 'scratch', seed: int = 0) -> dict:
    "A minimal results.json: one network, two test sets, `rows` = {run: (psnr, ssim, haarpsi) per set}."
    tables = {'net': {s: [{'run': 'input', 'mean': {'psnr': 20., 'ssim': .5, 'haarpsi': .6}}] for s in ('A', 'B')}}
    for run_name, per_set in rows.items():
        for s, (p, q, h) in zip(('A', 'B'), per_set):
            tables['net'][s].append({'run': run_name, 'protocol': protocol, 'lr': 1e-3, 'weight': None,
                                     'mean': {'psnr': p, 'ssim': q, 'haarpsi': h, 'msssim': None}})
    return {'task': task, 'seed': seed, 'command': f'mdf-loss experiment --task {task}', 'config': {'steps': 10},
            'sweep': {}, 'tables': tables}


def test_mdf_verdict_margins_and_best_protocol(tmp_path):
    scratch = _results('denoise', {'l1': [(30, .8, .85), (28, .7, .80)], 'mdf-official': [(24, .5, .80), (23, .4, .75)],
                                   'msssim': [(29, .8, .84), (27, .7, .79)]})
    finetune = _results('denoise', {'l1': [(30, .8, .85), (28, .7, .80)], 'mdf-official': [(29.9, .79, .86), (28.1, .69, .80)],
                                    'l1+0.001*mdf-official': [(30, .8, .85), (28, .7, .80)]}, protocol='finetune')
    paths = []
    for name, res in (('scratch', scratch), ('finetune', finetune)):
        paths.append(tmp_path / f'{name}.json'); paths[-1].write_text(json.dumps(res))
    out = run('mdf_verdict.py', *map(str, paths), '--out', str(tmp_path / 'verdict'))
    runs = {(r['protocol'], r['run']): r for r in out['runs']}
    assert set(runs) == {('scratch', 'mdf-official'), ('finetune', 'mdf-official'), ('finetune', 'l1+0.001*mdf-official')}  # msssim is not MDF
    assert runs[('scratch', 'mdf-official')]['mean']['psnr'] == pytest.approx(-5.5)
    assert runs[('scratch', 'mdf-official')]['range']['psnr'] == pytest.approx([-6, -5])
    assert runs[('finetune', 'mdf-official')]['mean']['haarpsi'] == pytest.approx(0.005)
    best = {(b['loss'], b['kind']): b for b in out['best']}
    assert best[('mdf-official', 'alone')]['protocol'] == 'finetune'
    assert best[('mdf-official', 'l1+w*mdf')]['mean']['psnr'] == pytest.approx(0)
    md = (tmp_path / 'verdict.md').read_text()
    assert '| denoise | net | mdf-official | alone | finetune' in md and 'haarpsi wins' in md


def test_mdf_verdict_refuses_files_without_l1(tmp_path):
    p = tmp_path / 'r.json'
    p.write_text(json.dumps(_results('jpeg', {'mdf': [(1, 1, 1), (1, 1, 1)]})))
    r = subprocess.run([sys.executable, str(BENCH / 'mdf_verdict.py'), str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and 'no MDF run with an L1 run beside it' in r.stderr
    r = subprocess.run([sys.executable, str(BENCH / 'mdf_verdict.py'), str(tmp_path / 'missing.json')], capture_output=True, text=True)
    assert r.returncode == 2 and 'no such results file' in r.stderr


def test_mdf_verdict_across_seeds(tmp_path):
    paths = []
    for seed, gain in ((0, .004), (1, .002), (2, -.001)):
        res = _results('sisr', {'l1': [(27, .78, .78), (25, .72, .72)], 'mdf-official': [(26.9, .74, .78 + gain), (24.9, .70, .72 + gain)]}, seed=seed)
        paths.append(tmp_path / f's{seed}.json'); paths[-1].write_text(json.dumps(res))
    out = run('mdf_verdict.py', *map(str, paths), '--out', str(tmp_path / 'v'))
    (g,) = out['across_seeds']
    assert g['seeds'] == [0, 1, 2] and g['run'] == 'mdf-official'
    assert g['summary']['haarpsi']['mean'] == pytest.approx(0.005/3)
    assert g['summary']['haarpsi']['min'] == pytest.approx(-0.001) and g['summary']['psnr']['max'] == pytest.approx(-0.1)
    assert '## Across seeds' in (tmp_path / 'v.md').read_text()
