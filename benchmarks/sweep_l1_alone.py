"""The w = 0 point of the recorded `L1 + w*MDF` weight sweeps: fine-tuning with L1 alone, validated as the sweep was.

The recorded restoration protocols (benchmarks/results/restoration_{denoise,jpeg,sisr}_protocols.json, made by
`mdf-loss experiment ... --protocol finetune --sweep`) chose w in {0.001, 0.01, 0.1, 1} for `l1+mdf-official` and
`l1+mdf` by the validation score (HaarPSI on fixed crops of the held-out training images) but have no w = 0 point.
For each task file and each network of its sweeps this script rebuilds the experiment from the file's recorded command
(the same arguments, the data folders resolved on this machine, checkpoints in a temporary folder), pretrains with L1
for half the steps as the finetune protocol does, fine-tunes with the plain `l1` loss for the other half (the w = 0
candidate: no MDF term is computed) and scores it with the experiment's own validation score, the measure the sweep
selected by (benchmarks/l1_alone_worker.py, in a process of its own).

That fine-tuned network is also the recorded `l1` finetune run, so its test scores are compared with the recorded ones
image by image: the check that the rebuilt pipeline is the recorded one (on the CPU with one thread the training is
deterministic, so they agree to float precision or the pipeline differs).

Which code: the current package draws other random numbers than the one that recorded the files (mdf_loss 0.1; the
patch, test-noise and validation-crop generators were replaced in commit 2921e19), so it trains on other patches and
validates on other crops: its w = 0 score is not comparable with the recorded candidates, and its reproduction check
fails. `--code recorded` (the default) therefore runs the `mdf_loss` of the git commit that last wrote each recorded
file, extracted with `git archive` into a temporary folder and put first on PYTHONPATH; `--code current` runs the
package as it is now; `--code REV` any revision. The check says whether the choice reproduces the recording.

Even the recorded code does not reproduce a recording bit for bit on another kind of CPU: the 2026-11-26 recordings
were made on AVX512 CPUs (the benchmarks recorded that day on the same platform say 'AMD EPYC', 'AVX512'); on another
vector ISA the same code draws the same patches and test inputs (the input scores agree to 1e-7) but rounds
differently, and 600 steps of Adam carry that round-off to a few tenths of a dB on single test images
(tests/test_legacy_runs.py says the same of resumed phase-1 runs; on one machine two runs agree bit for bit, and
forcing a lower ISA there, ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41, moves the training losses by 1e-8
within ten steps). The drift of a validation score can be as large
as the gaps between the sweep's weights, so a w = 0 score from another CPU cannot be set beside the recorded candidates
at face value: `--recheck 0.001` trains the recorded candidates of that weight again here, from the same pre-training,
so that w = 0 and w = 0.001 are compared on one machine, and the candidate's score here against its recorded score
measures the drift.

The `mdf` test column is the value of the shipped loss of the task on the restored image; the shipped losses were
replaced in mdf_loss 0.2, so when the code run is of another minor version than the recording that column is compared
but left out of the match (the match is about the restored images). For the same reason the recorded `l1+mdf`
candidates of a 0.1 recording were trained with the 0.1 shipped loss.

Usage: python benchmarks/sweep_l1_alone.py [--tasks denoise,jpeg,sisr] [--code recorded|current|REV] [--threads N]
           [--recheck 0.001] [--steps N] [--out benchmarks/results/sweep_l1_alone.json] [--fresh]
       (the --out file is rewritten after every task; started again, the script keeps the tasks it holds that were made
       with the same settings; --fresh replaces it; --steps N overrides the recorded steps, for a smoke run only)
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from mdf_loss.runtime import atomic_write_bytes, data_dir

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, command_line, display_path, load_average, machine, now, portable, sha256, versions  # noqa: E402
from l1_alone_worker import recorded_arguments  # noqa: E402

TASKS = ('denoise', 'jpeg', 'sisr')
RECORDED = 'benchmarks/results/restoration_{task}_protocols.json'
WORKER = Path(__file__).parent/'l1_alone_worker.py'
TOLERANCE = 1e-5  # largest |recorded - reproduced| of a per-image test score that counts as the same run
SHIPPED_LOSS_COLUMNS = ('mdf',)  # test columns that are the value of the shipped loss file, not of the restored image alone


def sweeps_by_network(res: dict, protocol: str = 'finetune') -> dict:
    "{network: {swept loss: its sweep record}} of the recorded sweeps that ran candidates under `protocol`."
    out = {}
    for key, sw in res.get('sweep', {}).items():
        m = re.fullmatch(r'(.+) \((.+), (.+)\)', key)
        if m and m[3] == protocol and sw.get('candidates'): out.setdefault(m[2], {})[m[1]] = sw
    return out


def max_difference(recorded: dict, reproduced: dict, skip=()) -> dict:
    """The largest |recorded - reproduced| of the per-image test scores, overall and per measure, and where it is.
    `recorded`, `reproduced`: {test set: {'per_image': {image: {measure: value}}}}; measures in `skip` are left out."""
    by, where, worst, n = {}, None, 0.0, 0
    for name, e in recorded.items():
        for im, ms in e['per_image'].items():
            got = reproduced[name]['per_image'][im]
            for k, v in ms.items():
                if k in skip: continue
                w = got.get(k)
                if v is None and w is None: continue
                d = math.inf if v is None or w is None else abs(v - w)
                n += 1
                by[k] = max(by.get(k, 0.0), d)
                if d > worst or where is None: worst, where = d, f'{name}/{im}/{k}'
    return {'max_abs_diff': worst, 'where': where, 'by_measure': by, 'compared': n}


def sweep_points(w0_score: float, sweep: dict) -> dict:
    "The recorded candidates with the w = 0 point beside them (by weight), the best weight, and the margins of w = 0."
    pts = [{'weight': 0.0, 'score': w0_score, 'source': 'reproduced (l1 alone)'}]
    pts += [{'weight': c['weight'], 'score': c['score'], 'source': 'recorded'} for c in sweep['candidates'] if c.get('score') is not None]
    rec = [p for p in pts if p['source'] == 'recorded']
    smallest = min(rec, key=lambda p: p['weight']) if rec else None
    return {'select_by': sweep.get('select_by'), 'recorded_choice': sweep.get('chosen'),
            'points': sorted(pts, key=lambda p: p['weight']), 'best_weight': max(pts, key=lambda p: p['score'])['weight'],
            'w0_minus_best_recorded': w0_score - max(p['score'] for p in rec) if rec else None,
            'smallest_w_minus_w0': None if smallest is None else {'weight': smallest['weight'], 'diff': smallest['score'] - w0_score}}


def recheck_plan(sweeps: dict, weights: str | None) -> dict:
    "{network: {swept loss: [recorded weights among `weights`]}}: the recorded candidates to train again."
    want = [float(w) for w in (weights or '').split(',') if w.strip()]
    return {net: {loss: [c['weight'] for c in sw['candidates'] if any(math.isclose(c['weight'], w) for w in want)]
                  for loss, sw in by_loss.items()} for net, by_loss in sweeps.items()}


def rechecked(cand: dict, sweep: dict, w0_score: float) -> dict:
    "A recorded candidate trained again here: its score beside the recorded one, and w = 0 against it on this machine."
    rec = next(c for c in sweep['candidates'] if math.isclose(c['weight'], cand['weight']))
    return {'swept': cand['swept'], 'loss': cand['loss'], 'weight': cand['weight'], 'score': cand['score'],
            'recorded_score': rec['score'], 'score_minus_recorded': cand['score'] - rec['score'],
            'final_loss': cand['final_loss'], 'recorded_final_loss': rec['final_loss'],
            'w0_minus_this': w0_score - cand['score'], 'seconds': cand['seconds']}


def recording_commit(path) -> str:
    "The git commit that last wrote `path` (the code that made a recorded file is the code committed with it)."
    return subprocess.run(['git', 'log', '-1', '--format=%H', '--', str(path)], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def code_folder(rev: str, into: Path) -> Path:
    "A folder holding the `mdf_loss` package of git revision `rev` (extracted once into `into`), to put first on PYTHONPATH."
    full = subprocess.run(['git', 'rev-parse', '--verify', f'{rev}^{{commit}}'], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    folder = into/full
    if not (folder/'mdf_loss').is_dir():
        tar = subprocess.run(['git', 'archive', '--format=tar', full, 'mdf_loss'], cwd=REPO, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t: t.extractall(folder, filter='data')
    return folder


def run_worker(spec: dict, pythonpath: Path | None) -> dict:
    "Run benchmarks/l1_alone_worker.py on `spec` under the current package, or under the code in `pythonpath`."
    env = {**os.environ, 'PYTHONWARNINGS': os.environ.get('PYTHONWARNINGS', 'ignore')}
    if pythonpath is not None: env['PYTHONPATH'] = os.pathsep.join([str(pythonpath), *filter(None, [os.environ.get('PYTHONPATH')])])
    r = subprocess.run([sys.executable, str(WORKER), json.dumps(spec)], stdout=subprocess.PIPE, env=env, text=True)
    if r.returncode: raise RuntimeError(f'the worker failed (exit {r.returncode}); its messages are above')
    return json.loads(r.stdout)


def one_task(task: str, a, data, code: dict, work: Path) -> dict:
    "Rebuild the recorded experiment of `task` under `code` and add the w = 0 point of each of its networks' sweeps."
    t0 = time.perf_counter()
    path = REPO/RECORDED.format(task=task)
    rec = json.loads(path.read_text())
    sweeps = sweeps_by_network(rec)
    if not sweeps: raise ValueError(f'{display_path(path)} records no finetune sweep with candidates')
    with tempfile.TemporaryDirectory(prefix=f'sweep_l1_alone_{task}_', dir=work) as out_dir:  # checkpoints: never a stale run's
        got = run_worker({'command': rec['command'], 'data': str(data), 'work': out_dir, 'steps': a.steps,
                          'threads': a.threads, 'networks': list(sweeps), 'recheck': recheck_plan(sweeps, a.recheck)}, code['folder'])
        got['rebuilt_command'] = got['rebuilt_command'].replace(out_dir, '<temporary folder>')
    where = Path(got['mdf_loss_path'])
    if code['folder'] is not None and Path(code['folder']).resolve() not in where.parents:
        raise RuntimeError(f"the worker imported mdf_loss from {where}, not from the extracted revision {code['folder']}")
    c = rec['config']
    for k in ('train_images', 'validation_images', 'test_sets'):  # the same images as the recording, or nothing to compare
        if got[k] != c.get(k): raise ValueError(f'{task}: {k} is {got[k]}, the recording has {c.get(k)}; check the data folder {data}')
    for k, v in got['settings'].items():
        if k in c and c[k] != v and not (k == 'steps' and a.steps is not None):
            raise ValueError(f'{task}: {k} is {v}, the recording has {c[k]}')
    skip = SHIPPED_LOSS_COLUMNS if rec['versions']['mdf_loss'].split('.')[:2] != got['mdf_loss_version'].split('.')[:2] else ()
    nets = {}
    for network, sw in sweeps.items():
        g = got['networks'][network]
        run = next(r for r in rec['runs'] if r['network'] == network and r['protocol'] == 'finetune' and r['run'] == 'l1')
        check = max_difference(run['eval'], g['test'], skip)
        hist = [abs(x - y) for x, y in zip(run['history'], g['history'])]
        nets[network] = {
            'w0': {'weight': 0.0, **{k: g[k] for k in ('loss', 'lr', 'finetune_lr', 'steps', 'select_by', 'score', 'final_loss')}},
            'sweeps': {loss: sweep_points(g['score'], s) for loss, s in sweeps[network].items()},
            'rechecked': [rechecked(c, sweeps[network][c['swept']], g['score']) for c in g['rechecked']],
            'reproduction': {'run': 'l1 [finetune]', 'matches': check['max_abs_diff'] <= TOLERANCE, 'tolerance': TOLERANCE, **check,
                             'left_out': list(skip), 'all_measures': max_difference(run['eval'], g['test']),
                             'final_loss': {'recorded': run['final_loss'], 'reproduced': g['final_loss']},
                             'history_max_abs_diff': max(hist) if hist else None,
                             'first_history_diff_at': next((i for i, d in enumerate(hist) if d > TOLERANCE), None),
                             'history': {'recorded': run['history'], 'reproduced': g['history']},
                             'test_mean': {k: {'recorded': e['mean'], 'reproduced': g['test'][k]['mean']} for k, e in run['eval'].items()}},
            'seconds': g['seconds']}
        r = nets[network]['reproduction']
        print(f"{task} {network}: w=0 {g['select_by']} {g['score']:.6f}; recorded l1 run reproduced: {r['matches']} "
              f"(max diff {r['max_abs_diff']:.3g} at {r['where']}; {g['seconds']['total']:.0f} s)", file=sys.stderr, flush=True)
        for c in nets[network]['rechecked']:
            print(f"{task} {network}: {c['loss']} score recorded {c['recorded_score']:.6f}, here {c['score']:.6f} "
                  f"(w=0 minus it here {c['w0_minus_this']:+.6f})", file=sys.stderr, flush=True)
    return {'date': now(), 'recorded': display_path(path), 'recorded_sha256': sha256(path), 'recorded_command': rec['command'],
            'recorded_date': rec['date'], 'recorded_versions': rec['versions'], 'recorded_machine': rec['machine'],
            'code': {k: v for k, v in code.items() if k != 'folder'} | {'mdf_loss_version': got['mdf_loss_version'], 'api': got['api']},
            'rebuilt_command': portable(got['rebuilt_command'], data), 'torch_threads': got['torch_threads'],
            'settings': settings(a, path, code), **{k: got[k] for k in ('train_images', 'validation_images')},
            'networks': nets, 'seconds': time.perf_counter() - t0}


def summary(tasks: dict) -> list[dict]:
    "One row per task, network and swept loss: w = 0 beside the recorded candidates, and against those trained here."
    rows = []
    for task, e in tasks.items():
        for network, x in e['networks'].items():
            for loss, sw in x['sweeps'].items():
                here = {c['weight']: c['score'] for c in x.get('rechecked', []) if c['swept'] == loss}
                rows.append({'task': task, 'network': network, 'swept': loss, 'select_by': sw['select_by'],
                             'w0': x['w0']['score'], 'recorded': {p['weight']: p['score'] for p in sw['points'] if p['source'] == 'recorded'},
                             'recorded_choice': sw['recorded_choice']['weight'], 'rechecked_here': here,
                             'w0_minus_rechecked_here': {w: x['w0']['score'] - v for w, v in here.items()},
                             'reproduction_max_abs_diff': x['reproduction']['max_abs_diff']})
    return rows


def settings(a, path: Path, code: dict) -> dict:
    "What a task's result depends on: a result file's task is kept on a later start only when these are the same."
    return {'steps': a.steps, 'threads': a.threads, 'code': code['revision'], 'recheck': a.recheck, 'recorded_sha256': sha256(path)}


def resolve_code(choice: str, path: Path, work: Path) -> dict:
    "The code a task runs: {'revision', 'why', 'folder'} (folder None: the current package)."
    if choice == 'current': return {'revision': 'current', 'why': 'the package as it is in this checkout', 'folder': None}
    rev = recording_commit(path) if choice == 'recorded' else choice
    if not rev: raise ValueError(f'{display_path(path)} is not in the git history: no recorded code to run')
    folder = code_folder(rev, work)
    return {'revision': folder.name, 'why': (f'the commit that last wrote {display_path(path)}' if choice == 'recorded'
                                             else f'asked for: --code {choice}'), 'folder': folder}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--tasks', default=','.join(TASKS), help='comma-separated tasks (default: %(default)s)')
    p.add_argument('--code', default='recorded', help="'recorded' (the commit that wrote each recorded file; default), "
                                                      "'current' (this checkout's package) or a git revision")
    p.add_argument('--threads', type=int, default=None, help="torch CPU threads (default: the recorded command's --threads)")
    p.add_argument('--recheck', default=None, help='comma-separated recorded weights (e.g. 0.001) whose candidates are trained '
                                                    'again here from the same pre-training: the drift of their validation '
                                                    'score from the recorded one, and w = 0 against them on this machine')
    p.add_argument('--steps', type=int, default=None, help='override the recorded steps (a smoke run; the reproduction check then fails)')
    p.add_argument('--out', default=str(REPO/'benchmarks/results/sweep_l1_alone.json'),
                   help='the result JSON, rewritten after every task (default: benchmarks/results/sweep_l1_alone.json)')
    p.add_argument('--fresh', action='store_true', help='start again even if --out holds finished tasks')
    a = p.parse_args(argv)
    tasks = [t.strip() for t in a.tasks.split(',') if t.strip()]
    if not tasks or any(t not in TASKS for t in tasks): p.error(f'--tasks must name some of {list(TASKS)}, got {a.tasks!r}')
    if a.threads is not None and a.threads < 1: p.error(f'--threads must be a positive integer, got {a.threads}')
    data = data_dir()
    if data is None: sys.exit('SKIPPED: shared data not found; set MDF_LOSS_DATA')
    if a.threads: torch.set_num_threads(a.threads)  # the workers' count, so that the machine record says it
    out, t0 = Path(a.out), time.perf_counter()
    old = json.loads(out.read_text()).get('tasks', {}) if out.exists() and not a.fresh else {}
    res = {'what': 'the w = 0 point (L1 alone) of the recorded L1 + w*MDF finetune sweeps, validated as their candidates were, '
                   'and the reproduction check of the recorded l1 finetune run (see benchmarks/sweep_l1_alone.py)',
           'command': portable(command_line(argv), data), 'date': now(), 'machine': machine(), 'versions': versions(),
           'load_average_start': load_average(), 'tasks': {}}
    with tempfile.TemporaryDirectory(prefix='sweep_l1_alone_') as tmp:
        work = Path(tmp)
        for task in tasks:
            path = REPO/RECORDED.format(task=task)
            a_task = argparse.Namespace(**vars(a))
            if a_task.threads is None:  # the recorded command's (all three recorded --threads 1)
                a_task.threads = recorded_arguments(json.loads(path.read_text())['command'], data, '.').threads
            code = resolve_code(a.code, path, work)
            if task in old:
                if old[task].get('settings') != settings(a_task, path, code):
                    sys.exit(f'{out} holds {task} made with other settings ({old[task].get("settings")}); '
                             'choose another --out, or pass --fresh to replace it')
                res['tasks'][task] = old[task]; print(f'{task}: kept from {out}', file=sys.stderr, flush=True)
                continue
            res['tasks'][task] = one_task(task, a_task, data, code, work)
            res['seconds'] = time.perf_counter() - t0
            atomic_write_bytes((json.dumps({**res, 'partial': 'tasks still to come'}, indent=1) + '\n').encode(), out)
    for task, e in old.items():  # tasks of an earlier start that this one did not name
        res['tasks'].setdefault(task, e)
    res['summary'] = summary(res['tasks'])
    res['load_average_end'], res['seconds'] = load_average(), time.perf_counter() - t0
    text = json.dumps(res, indent=1)
    atomic_write_bytes((text + '\n').encode(), out)
    print(text)


if __name__ == '__main__':
    main()
