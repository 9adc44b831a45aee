"""The benchmark scripts run and compute what they claim, at tiny sizes (their recorded outputs are in benchmarks/results)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BENCH, run_benchmark


run = run_benchmark


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


def _fast_mode_quality():
    sys.path.insert(0, str(BENCH))
    try:
        import fast_mode_quality
        return fast_mode_quality
    finally: sys.path.remove(str(BENCH))


def test_fast_mode_names_build_the_sampler_they_name():
    fmq = _fast_mode_quality()
    from mdf_loss.loss import ScaleSampler
    old = fmq.loss_options('sample0.5', seed=3)['sample']
    assert isinstance(old, ScaleSampler) and (old.fraction, old.per_image, old.design, old.always) == (0.5, False, 'systematic', ())
    new = fmq.loss_options('bf16+sample0.25+image+narrow+strat', seed=3)
    s = new['sample']
    assert (s.fraction, s.per_image, s.design, s.always) == (0.25, True, 'stratified', 'narrow')
    assert new['dtype'] is torch_bfloat16() and s.generator.initial_seed() == 3
    for bad in ('sample0.5+wide', 'image', 'samplehalf'):
        with pytest.raises(SystemExit): fmq.loss_options(bad)


def torch_bfloat16():
    import torch
    return torch.bfloat16


def _run(seed, mode, psnr, train_s, curve=None):
    r = {'seed': seed, 'mode': mode, 'train_s': train_s, 'step_ms': 1.0, 'final_loss': 0.1,
         'test': {'A': {'psnr': psnr, 'ssim': 0.5 + psnr/1000, 'n': 1}}}
    if curve: r['curve'] = curve
    return r


def test_equal_time_reads_the_exact_curve_at_the_modes_time():
    fmq = _fast_mode_quality()
    curve = [{'step': s, 'train_s': t, 'test': {'A': {'psnr': p, 'ssim': 0.5 + p/1000}}}
             for s, t, p in ((50, 10.0, 20.0), (100, 20.0, 22.0))]
    res = {'runs': [_run(0, 'exact', 22.0, 20.0, curve), _run(0, 'fast', 21.5, 15.0),
                    _run(1, 'exact', 22.0, 20.0, curve), _run(1, 'fast', 21.7, 15.0), _run(0, 'slow', 23.0, 99.0)]}
    fmq.equal_time(res)
    at = res['vs_exact_equal_time']['fast']
    assert at['seed 0']['exact_steps_at_time'] == pytest.approx(75) and at['seed 0']['exact_at_time']['A']['psnr'] == pytest.approx(21)
    assert at['seed 0']['A']['psnr_diff'] == pytest.approx(0.5) and at['seed 1']['A']['psnr_diff'] == pytest.approx(0.7)
    assert at['paired']['A']['psnr']['mean'] == pytest.approx(0.6) and at['paired']['A']['psnr']['n'] == 2
    assert res['vs_exact_equal_time']['slow']['seed 0'] == {'note': 'outside the recorded curve'}


def test_fast_mode_quality_resumes_from_its_result_file(tmp_path):
    "A result file with the finished runs: the next start keeps them and refuses another protocol's file."
    fmq = _fast_mode_quality()
    from mdf_loss.runtime import data_dir
    if data_dir() is None: pytest.skip('shared data not found (set MDF_LOSS_DATA): the benchmark needs its images')
    out = tmp_path / 'q.json'
    done = {'protocol': fmq.PROTOCOL_TEXT['finetune'] + ', quick preset: ' + json.dumps(
                {'patch': 48, 'batch': 8, 'steps': 2, 'lr': 0.001, 'train_scale': 0.5, 'max_train_images': 40, 'max_test_images': 10}),
            'task': 'denoise', 'runs': [_run(0, 'exact', 20.0, 1.0), _run(0, 'sample0.5', 20.0, 1.0)]}
    out.write_text(json.dumps(done))
    res = run('fast_mode_quality.py', '--protocol', 'finetune', '--steps', '2', '--modes', 'exact,sample0.5',
              '--seeds', '0', '--out', str(out), timeout=600)
    assert [r['test'] for r in res['runs']] == [r['test'] for r in done['runs']]  # kept, not trained again
    assert 'partial' not in res and json.loads(out.read_text())['paired']['modes']['sample0.5']
    r = subprocess.run([sys.executable, str(BENCH / 'fast_mode_quality.py'), '--protocol', 'scratch', '--steps', '2',
                        '--modes', 'exact', '--out', str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and 'another protocol' in r.stderr and '--fresh' in r.stderr


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        import importlib
        return importlib.import_module(name)
    finally: sys.path.remove(str(BENCH))


def test_sweep_l1_alone_rebuilds_the_recorded_command_on_this_machine(tmp_path):
    w = _bench_module('l1_alone_worker')
    data = tmp_path / 'data'
    assert w.local_path('../shared/data/benchmarks/CSet5', data) == str(data / 'benchmarks' / 'CSet5')
    assert w.local_path('$MDF_LOSS_DATA/benchmarks/CSet5', data) == str(data / 'benchmarks' / 'CSet5')
    assert w.local_path('mine/CSet5', data) == 'mine/CSet5'  # not a data-folder path: left as it is
    args = w.recorded_arguments('mdf-loss experiment --task jpeg --losses l1,l1+mdf --train ../shared/data/benchmarks/T '
                                '--test ../shared/data/benchmarks/A ../shared/data/benchmarks/B --out runs/x --seed 3 '
                                '--protocol finetune --threads 1 --sweep', data, tmp_path / 'work', steps=4)
    assert (args.train_dir, args.test_dirs, args.out_dir) == (data / 'benchmarks' / 'T', [data / 'benchmarks' / 'A', data / 'benchmarks' / 'B'], tmp_path / 'work')
    assert (args.seed, args.threads, args.steps, args.sweep, args.protocols) == (3, 1, 4, True, 'finetune')
    with pytest.raises(ValueError): w.recorded_arguments('mdf-loss train --task jpeg', data, tmp_path)


def test_sweep_l1_alone_puts_w0_beside_the_recorded_candidates():
    s = _bench_module('sweep_l1_alone')
    cands = [{'weight': w, 'lr': 1e-3, 'score': sc} for w, sc in ((0.001, 0.81), (0.01, 0.80), (1.0, 0.79))]
    res = {'sweep': {'vgg': {'run': False}, 'l1+mdf (dncnn, finetune)': {'select_by': 'haarpsi', 'candidates': cands},
                     'l1+mdf (edsr, scratch)': {'candidates': cands}}}
    by = s.sweeps_by_network(res)
    assert list(by) == ['dncnn'] and list(by['dncnn']) == ['l1+mdf']
    pts = s.sweep_points(0.82, by['dncnn']['l1+mdf'])
    assert [p['weight'] for p in pts['points']] == [0.0, 0.001, 0.01, 1.0] and pts['best_weight'] == 0.0
    assert pts['w0_minus_best_recorded'] == pytest.approx(0.01)
    assert pts['smallest_w_minus_w0']['weight'] == 0.001 and pts['smallest_w_minus_w0']['diff'] == pytest.approx(-0.01)


def test_sweep_l1_alone_finds_the_largest_test_score_difference():
    s = _bench_module('sweep_l1_alone')
    rec = {'A': {'per_image': {'a.png': {'psnr': 30.0, 'ssim': 0.8, 'msssim': None, 'mdf': 1.0}}},
           'B': {'per_image': {'b.png': {'psnr': 20.0, 'ssim': 0.5, 'msssim': 0.9, 'mdf': 2.0}}}}
    got = {'A': {'per_image': {'a.png': {'psnr': 30.0, 'ssim': 0.8000001, 'msssim': None, 'mdf': 1.5}}},
           'B': {'per_image': {'b.png': {'psnr': 20.002, 'ssim': 0.5, 'msssim': 0.9, 'mdf': 2.0}}}}
    d = s.max_difference(rec, got, skip=('mdf',))
    assert d['max_abs_diff'] == pytest.approx(0.002) and d['where'] == 'B/b.png/psnr' and 'mdf' not in d['by_measure']
    assert d['compared'] == 5  # both None: nothing to compare
    assert s.max_difference(rec, got)['where'] == 'A/a.png/mdf'
    assert s.max_difference(rec, rec)['max_abs_diff'] == 0


def test_sweep_l1_alone_extracts_the_code_that_wrote_a_recorded_file(tmp_path):
    s = _bench_module('sweep_l1_alone')
    if not (s.REPO / '.git').exists(): pytest.skip('not a git checkout: no recorded code to extract')
    path = s.REPO / s.RECORDED.format(task='denoise')
    rev = s.recording_commit(path)
    if not rev: pytest.skip('the recorded file is not in this clone\'s history')
    folder = s.code_folder(rev, tmp_path)
    assert folder.name == rev and (folder / 'mdf_loss' / '__init__.py').is_file()
    assert s.code_folder(rev[:10], tmp_path) == folder  # a short name is the same revision, extracted once
    assert s.resolve_code('current', path, tmp_path)['folder'] is None


def test_sweep_l1_alone_rechecks_recorded_candidates_on_this_machine():
    s = _bench_module('sweep_l1_alone')
    sw = {'select_by': 'haarpsi', 'chosen': {'weight': 0.01, 'lr': 1e-3},
          'candidates': [{'weight': w, 'lr': 1e-3, 'score': sc, 'final_loss': 0.1} for w, sc in ((0.001, 0.81), (0.01, 0.82))]}
    sweeps = {'dncnn': {'l1+mdf': sw, 'l1+mdf-official': sw}}
    assert s.recheck_plan(sweeps, '0.001') == {'dncnn': {'l1+mdf': [0.001], 'l1+mdf-official': [0.001]}}
    assert s.recheck_plan(sweeps, None) == {'dncnn': {'l1+mdf': [], 'l1+mdf-official': []}}
    here = {'swept': 'l1+mdf', 'loss': 'l1+0.001*mdf', 'weight': 0.001, 'score': 0.815, 'final_loss': 0.2, 'seconds': {}}
    c = s.rechecked(here, sw, w0_score=0.816)
    assert c['recorded_score'] == 0.81 and c['score_minus_recorded'] == pytest.approx(0.005) and c['w0_minus_this'] == pytest.approx(0.001)
    tasks = {'denoise': {'networks': {'dncnn': {'w0': {'score': 0.816}, 'rechecked': [{**c}], 'reproduction': {'max_abs_diff': 0.3},
                                                'sweeps': {'l1+mdf': s.sweep_points(0.816, sw)}}}}}
    row, = s.summary(tasks)
    assert row['recorded'] == {0.001: 0.81, 0.01: 0.82} and row['recorded_choice'] == 0.01
    assert row['rechecked_here'] == {0.001: 0.815} and row['w0_minus_rechecked_here'][0.001] == pytest.approx(0.001)
