"""benchmarks/stats.py, the paired verdict of every benchmark report, on known cases; and the reports that use it,
rebuilt from recorded values without training (task_specificity.py --report-only, fast_mode_quality.py --report-only)."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / 'benchmarks'
FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'task_specificity_small.json'
T975 = {2: 4.302653, 3: 3.182446, 9: 2.262157}  # Student t quantiles, from any statistics table
T80 = {2: 1.06066}


def load_stats():
    spec = importlib.util.spec_from_file_location('benchmark_stats', BENCH / 'stats.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


stats = load_stats()


def script(name: str, *args, timeout: int = 120) -> dict:
    "Run a benchmark script in a subprocess; its printed JSON."
    r = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_identical_columns_tie_with_a_zero_interval():
    a = {0: 27.1, 1: 27.3, 2: 26.9}
    r = stats.paired(a, dict(a))
    assert r['per_seed'] == {'0': 0.0, '1': 0.0, '2': 0.0} and r['mean'] == 0 and r['sd'] == 0
    assert r['ci'] == [0.0, 0.0] and r['verdict'] == 'tie'
    assert (r['positive'], r['negative'], r['zero']) == (0, 0, 3)


def test_constant_shift_wins_with_a_zero_width_interval():
    a, b = [25.5, 26.0, 27.25], [25.0, 25.5, 26.75]
    r = stats.paired(a, b)
    assert r['mean'] == pytest.approx(0.5) and r['sd'] == pytest.approx(0, abs=1e-12)
    assert r['ci'] == pytest.approx([0.5, 0.5]) and r['verdict'] == 'win' and r['positive'] == 3
    # the same shift where lower is better (a distance, say) is a loss; the differences stay A - B
    low = stats.paired(a, b, higher_is_better=False)
    assert low['verdict'] == 'loss' and low['mean'] == pytest.approx(0.5)


def test_pure_noise_is_a_tie():
    rng = np.random.default_rng(0)
    a, b = rng.normal(25, 0.1, 10), rng.normal(25, 0.1, 10)  # same distribution, fixed seed
    r = stats.paired(list(a), list(b))
    assert r['n'] == 10 and r['verdict'] == 'tie' and r['ci'][0] < 0 < r['ci'][1]
    d = a - b  # the interval, independently
    h = T975[9] * d.std(ddof=1) / math.sqrt(10)
    assert r['ci'] == pytest.approx([d.mean() - h, d.mean() + h], rel=1e-5)


def test_clear_loss_and_its_interval():
    diffs = [-1.0, -2.0, -3.0, -4.0]
    r = stats.paired(diffs)  # differences given directly
    h = T975[3] * np.std(diffs, ddof=1) / 2
    assert r['mean'] == pytest.approx(-2.5) and r['half_width'] == pytest.approx(h, rel=1e-6)
    assert r['ci'] == pytest.approx([-2.5 - h, -2.5 + h], rel=1e-6) and r['ci'][1] < 0
    assert r['verdict'] == 'loss' and (r['positive'], r['negative']) == (0, 4)
    assert stats.paired(diffs, higher_is_better=False)['verdict'] == 'win'


def test_one_seed_has_no_interval_and_never_crashes():
    r = stats.paired({0: 30.0}, {0: 20.0})
    assert r['n'] == 1 and r['mean'] == 10.0 and r['ci'] == [None, None] and r['half_width'] is None
    assert r['verdict'] == 'tie' and 'one seed' in r['reason']
    assert r['detectable']['half_width'] is None and r['detectable']['mde'] is None
    none = stats.paired({0: 1.0}, {1: 1.0})  # no seed in common
    assert none['n'] == 0 and none['verdict'] == 'tie' and none['mean'] is None and 'no paired' in none['reason']
    assert stats.interval_text(r) == '+10.000 (n = 1, no interval)'


def test_pairs_on_the_common_seeds_whatever_their_type():
    r = stats.paired({'0': 2.0, '1': 3.0, '2': 5.0}, {'1': 1.0, '2': 1.0, '3': 9.0})
    assert r['per_seed'] == {'1': 2.0, '2': 4.0} and r['n'] == 2
    assert list(stats.paired({10: 1, 9: 1, 2: 1}, {2: 0, 9: 0, 10: 0})['per_seed']) == ['2', '9', '10']  # numeric order


def test_detectable_difference_and_mde():
    d = stats.detectable(0.1, 3)
    assert d['half_width'] == pytest.approx(T975[2] * 0.1 / math.sqrt(3), rel=1e-6)
    assert d['mde'] == pytest.approx((T975[2] + T80[2]) * 0.1 / math.sqrt(3), rel=1e-5)
    assert stats.detectable(0.1, 1)['half_width'] is None and stats.detectable(None, 3)['mde'] is None
    assert stats.pooled_sd([0.3, 0.4]) == pytest.approx(math.sqrt((0.09 + 0.16) / 2)) and stats.pooled_sd([]) is None


def test_t_quantiles_from_the_table_match_scipy_or_a_table(monkeypatch):
    monkeypatch.setattr(stats, '_scipy_t', None)  # the fallback, whether scipy is installed or not
    assert stats.t_quantile(0.975, 2) == T975[2] and stats.t_quantile(0.8, 2) == T80[2]
    # beyond the table (df > 30): the normal quantile with its Cornish-Fisher correction
    for df, t in ((31, 2.039513), (40, 2.021075), (100, 1.983972), (10_000, 1.960201)):
        assert stats.t_quantile(0.975, df) == pytest.approx(t, abs=1e-5)
    assert stats.t_quantile(0.8, 60) == pytest.approx(0.847653, abs=1e-5)
    with pytest.raises(ValueError): stats.t_quantile(0.9, 5)
    with pytest.raises(ValueError): stats.t_quantile(0.975, 0)


def _interaction(table, own, files, tasks, s, m, weighting='file'):
    "The interaction index per seed, computed here with numpy from the fixture's per-seed values."
    key = lambda t: f'{s}/q10' if t == 'jpeg' else s
    seeds = sorted(table[tasks[0]][own[tasks[0]]][key(tasks[0])][m]['per_seed'])
    val = lambda t, c: np.array([table[t][c][key(t)][m]['per_seed'][k] for k in seeds])
    d = {t: val(t, own[t]) - np.mean([val(t, c) for c in files if c != own[t]], axis=0) for t in tasks}
    if weighting == 'task': return np.mean([d[t] for t in tasks], axis=0)
    owners = [f for f in files if any(own[t] == f for t in tasks)]
    return np.mean([np.mean([d[t] for t in tasks if own[t] == f], axis=0) for f in owners], axis=0)


def test_task_specificity_report_only_rebuilds_the_analysis_from_recorded_values(tmp_path):
    out = script('task_specificity.py', '--report-only', str(FIXTURE), '--out', str(tmp_path / 'ts'))
    fx = json.loads(FIXTURE.read_text())
    tasks = ['denoise', 'jpeg', 'sisr']
    ours = {t: f'ours-{t}' for t in tasks}
    authors = {'denoise': 'official-sisr', 'jpeg': 'official-jpeg', 'sisr': 'official-sisr'}
    cases = {'ours': (ours, list(ours.values()), tasks, 'file'),
             'authors': (authors, ['official-sisr', 'official-jpeg'], tasks, 'file'),
             'authors_jpeg_sisr': (authors, ['official-sisr', 'official-jpeg'], ['jpeg', 'sisr'], 'file'),
             'authors_by_task': (authors, ['official-sisr', 'official-jpeg'], tasks, 'task')}
    assert out['sets'] == ['CSet14'] and out['measures'] == ['psnr', 'ssim']
    for name, (own, files, tt, w) in cases.items():
        for m in ('psnr', 'ssim'):
            v = _interaction(fx['table'], own, files, tt, 'CSet14', m, w)
            r = out['paired']['interaction'][name]['cells']['CSet14'][m]
            h = T975[2] * v.std(ddof=1) / math.sqrt(3)
            assert list(r['per_seed'].values()) == pytest.approx(list(v), abs=1e-12)
            assert r['mean'] == pytest.approx(v.mean(), abs=1e-12) and r['ci'] == pytest.approx([v.mean() - h, v.mean() + h], rel=1e-5)
            assert r['verdict'] == ('win' if v.mean() - h > 0 else 'loss' if v.mean() + h < 0 else 'tie')
    ours_psnr = out['paired']['interaction']['ours']['cells']['CSet14']['psnr']
    assert ours_psnr['mean'] == pytest.approx(0.039, abs=5e-4) and ours_psnr['ci'] == pytest.approx([-0.025, 0.104], abs=5e-4)
    # main effects cancel within a family; every pairwise comparison is paired over the three seeds
    me = out['paired']['main_effects']['ours']['CSet14']['psnr']
    assert sum(r['mean'] for r in me.values()) == pytest.approx(0, abs=1e-9)
    pairs = out['paired']['pairs']['ours']
    assert len(pairs) == 3 * 2 * 2 and all(r['n'] == 3 and r['verdict'] in ('win', 'tie', 'loss') for r in pairs)
    assert out['report']['command'].startswith('python ') and '--report-only' in out['report']['command']
    md = (tmp_path / 'ts.md').read_text()
    assert '## Paired analysis' in md and '| CSet14 | PSNR (dB) | +0.039 (-0.025 to +0.104) |' in md
    assert 'cannot resolve effects smaller than' in md and '## CBSD68' not in md


def test_fast_mode_quality_report_only_adds_the_paired_summary(tmp_path):
    runs = []
    for seed, (e, b) in enumerate(((22.0, 22.01), (22.2, 22.19), (22.1, 22.12))):
        runs += [{'seed': seed, 'mode': 'exact', 'test': {'A': {'psnr': e, 'ssim': .5, 'n': 1}}},
                 {'seed': seed, 'mode': 'bf16', 'test': {'A': {'psnr': b, 'ssim': .5, 'n': 1}}},
                 {'seed': seed, 'mode': 'sample0.1', 'test': {'A': {'psnr': e - 1 - seed / 100, 'ssim': .45, 'n': 1}}}]
    src = tmp_path / 'q.json'
    src.write_text(json.dumps({'command': 'python benchmarks/fast_mode_quality.py (fake)', 'runs': runs, 'passes': {}}))
    out = script('fast_mode_quality.py', '--report-only', str(src), '--out', str(tmp_path / 'q2.json'))
    p = out['paired']
    assert p['modes']['bf16']['A']['psnr']['per_seed'] == pytest.approx({'0': 0.01, '1': -0.01, '2': 0.02})
    assert p['modes']['bf16']['A']['psnr']['verdict'] == 'tie' and p['non_inferiority']['bf16'] == 'shown'
    assert p['modes']['sample0.1']['A']['psnr']['verdict'] == 'loss' and p['non_inferiority']['sample0.1'] == 'failed'
    assert out['command'] == 'python benchmarks/fast_mode_quality.py (fake)' and out['passes'] == {}  # recorded fields kept
    assert json.loads((tmp_path / 'q2.json').read_text()) == out
