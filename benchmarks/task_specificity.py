"""Task specificity in restoration: the same network, trained under the same protocol with each task's MDF loss, for every task.

For each task (denoise sigma 25, JPEG q10/q20, SR x4) and seed, one `mdf-loss experiment` per loss with the finetune
protocol (L1 for half the steps, shared; then the loss for the other half at a tenth of the learning rate; the L1
column is L1 continued): L1, our three task losses and the authors' two files. Each experiment writes its own folder
under `--runs` and is skipped when its results.json exists, so the whole set can be run in pieces, by two processes
at once (a lock file marks a folder in progress). Then the tables: per task (row) and loss (column), the mean over
seeds of PSNR, SSIM and HaarPSI per test set, the spread over seeds and the margin against L1; the 3 x 3 matrix of
our losses, the authors' columns beside it, and the verdict: is the task's own loss better than the other task losses?

The verdict uses the pairing the study was built with (for one seed, every column starts from the same L1 checkpoint,
sees the same patches and is scored on the same images) through `benchmarks/stats.py`: per-seed differences, their
mean with a 95% t interval, win / tie / loss by the interval, the detectable difference beside it. It reports the own
loss against each rival; the interaction index (own loss minus the family's other losses, averaged so that a file
better on every task, a main effect, cancels out) for our three losses and the authors' two files; and the main
effects themselves. The earlier rule (ranges over seeds that do not overlap) is kept in `diagonal` for comparison.

    python benchmarks/task_specificity.py --threads 1 --out benchmarks/results/task_specificity_restoration

prints JSON and writes OUT.json and OUT.md. `--ours denoise=FILE,jpeg=FILE,sisr=FILE` replaces the shipped losses by
loss files (their folders are keyed by the file's sha256, so a new file is trained afresh); `--aggregate-only`
rebuilds the tables from the folders that exist; `--report-only OUT.json` rebuilds the analysis and the report from
the per-seed values a previous run recorded, with no training and no experiment folders (seconds):

    python benchmarks/task_specificity.py --report-only benchmarks/results/task_specificity_restoration.json --out benchmarks/results/task_specificity_restoration
"""
import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mdf_loss import MDFLoss
from mdf_loss.runtime import data_dir
from mdf_loss.weights import pretrained_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, display_path, portable, load_average, machine, now, sha256, versions, write_pair  # noqa: E402
import stats  # noqa: E402  (benchmarks/stats.py: the paired verdicts of every report)

TASKS = ('denoise', 'jpeg', 'sisr')
NETWORK = {'denoise': 'dncnn', 'jpeg': 'dncnn', 'sisr': 'srresnet'}
SETS = ('CSet14', 'CBSD68')
MEASURES = ('psnr', 'ssim', 'haarpsi')
PRIMARY_VARIANT = {'jpeg': 'q10'}  # the matrix's variant; the others are reported beside it
AUTHORS = {'official-sisr': 'mdf-official-sisr', 'official-jpeg': 'mdf-official-jpeg'}
AUTHORS_OWN = {'denoise': 'official-sisr', 'sisr': 'official-sisr', 'jpeg': 'official-jpeg'}  # SISR file = denoising file
DEFAULT_COLUMNS = 'l1,official-sisr,official-jpeg,ours-denoise,ours-jpeg,ours-sisr'
FMT = {'psnr': '{:.2f}', 'ssim': '{:.4f}', 'haarpsi': '{:.4f}'}
SFMT = {'psnr': '{:+.2f}', 'ssim': '{:+.4f}', 'haarpsi': '{:+.4f}'}
DFMT = {'psnr': '{:+.3f}', 'ssim': '{:+.4f}', 'haarpsi': '{:+.4f}'}  # paired differences and intervals
UFMT = {'psnr': '{:.3f}', 'ssim': '{:.4f}', 'haarpsi': '{:.4f}'}  # detectable differences
MNAME = {'psnr': 'PSNR (dB)', 'ssim': 'SSIM', 'haarpsi': 'HaarPSI'}


# ---------------------------------------------------------------- which runs

def loss_files(ours: str, authors) -> dict:
    "Column id -> {'path', 'sha256', 'task', ...} for our three losses and the authors' files."
    files = {}
    for item in (s.strip() for s in ours.split(',') if s.strip()):
        task, _, path = item.partition('=')
        if task not in TASKS: sys.exit(f'--ours: {task!r} is not one of the tasks {TASKS}; write task=FILE or a shipped name')
        path = path or str(pretrained_path(task))
        if not Path(path).is_file(): sys.exit(f'--ours: no such loss file {path}')
        files[f'ours-{task}'] = {'path': str(Path(path).resolve()), 'shipped_name': None if '=' in item else task}
    for name in authors:
        files[name] = {'path': str(pretrained_path(name)), 'shipped_name': name}
    for col, f in files.items():
        loss = MDFLoss.load(f['path'])
        meta, prov = dict(loss.meta or {}), dict((loss.meta or {}).get('provenance') or {})
        cfg = prov.get('config') or {}
        f.update(sha256=sha256(f['path']), task=meta.get('task'), discriminators=len(loss.discriminators), used=loss.num_scales,
                 command=prov.get('command'), iters_per_scale=cfg.get('iters'), train_max_size=cfg.get('max_size'),
                 source_file=prov.get('source_file'))
        if col.startswith('ours-') and f['task'] != col[5:]:
            print(f"warning: {col} is the file {f['path']}, whose meta says task {f['task']!r}", file=sys.stderr)
    return files


def plan(a, files: dict) -> list[dict]:
    "One job per (column, seed, task): its experiment folder and the loss it trains."
    root = Path(a.runs) / f'{a.preset}_steps{a.steps or "preset"}_test{a.max_test_images}'
    cols = [c.strip() for c in a.columns.split(',') if c.strip()]
    bad = [c for c in cols if c != 'l1' and c not in files]
    if bad: sys.exit(f'--columns: unknown {bad}; choose among l1 and {list(files)}')
    if a.sum_weight is not None: cols += [f'l1+{a.sum_weight:g}*{c}' for c in list(cols) if c != 'l1']
    jobs = []
    for seed in a.seeds:  # seed by seed, so that a run cut short leaves whole seeds of every column
        for col in cols:
            mdf = col.split('*', 1)[1] if '*' in col else col
            for task in a.tasks:
                if col == 'l1': loss, path, folder = 'l1', None, 'l1'
                else:
                    f = files[mdf]
                    loss = AUTHORS.get(mdf, 'mdf')
                    path = None if mdf in AUTHORS else f['path']
                    folder = f"{mdf}-{f['sha256'][:12]}"
                    if '*' in col:
                        loss, folder = f'l1+{a.sum_weight:g}*{loss}', f'l1+{a.sum_weight:g}x{folder}'
                jobs.append({'column': col, 'task': task, 'seed': seed, 'loss': loss, 'mdf_path': path,
                             'network': NETWORK[task], 'dir': str(root / task / f'seed{seed}' / folder),
                             'l1_dir': str(root / task / f'seed{seed}' / 'l1')})
    return jobs


def config(job: dict, a, data: Path):
    from mdf_loss.restoration.experiment import ExperimentConfig
    extra = {k: v for k, v in (('steps', a.steps), ('max_train_images', a.max_train_images)) if v is not None}
    return ExperimentConfig(task=job['task'], losses=(job['loss'],), train_dir=data / 'benchmarks' / 'CSun_Hays80',
                            test_dirs=[data / 'benchmarks' / s for s in SETS], preset=a.preset, protocols=('finetune',),
                            seed=job['seed'], networks=(job['network'],), out_dir=job['dir'], mdf_path=job['mdf_path'],
                            max_test_images=a.max_test_images, device=a.device, **extra)


def claim(folder: Path) -> bool:
    "Take the folder's lock (a file holding our pid); a lock whose process is gone is taken over."
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / '.lock'
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try: pid = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError): pid = None
            alive = False
            if pid:
                try: os.kill(pid, 0); alive = True
                except ProcessLookupError: alive = False
                except PermissionError: alive = True
            if alive: return False
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, f'{os.getpid()} {platform.node()}\n'.encode())
        os.close(fd)
        return True
    return False


def run_jobs(jobs: list[dict], a, data: Path) -> list[dict]:
    from mdf_loss.restoration.experiment import run_experiment
    log = []
    for i, job in enumerate(jobs):
        folder = Path(job['dir'])
        tag = f"[{i + 1}/{len(jobs)}] {job['task']} seed {job['seed']} {job['column']}"
        if (folder / 'results.json').is_file():
            log.append({**job, 'status': 'done before'}); continue
        if not claim(folder):
            print(f'{tag}: another process is on it; skipped', file=sys.stderr)
            log.append({**job, 'status': 'running elsewhere'}); continue
        try:
            cfg = config(job, a, data)
            shared = Path(job['l1_dir']) / 'checkpoints' / job['network'] / 'pretrain-l1.pt'
            mine = folder / 'checkpoints' / job['network'] / 'pretrain-l1.pt'
            if a.share_pretrain and job['column'] != 'l1' and shared.is_file() and (Path(job['l1_dir']) / 'results.json').is_file() and not mine.exists():
                mine.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shared, mine)  # the same L1 half as the L1 column's (same seed, data and steps)
            t0 = time.time()
            print(f'{tag}: training in {folder}', file=sys.stderr, flush=True)
            run_experiment(cfg, progress=False)
            log.append({**job, 'status': 'ran', 'seconds': round(time.time() - t0, 1)})
            print(f'{tag}: done in {time.time() - t0:.0f} s', file=sys.stderr, flush=True)
        except (FloatingPointError, ValueError) as e:
            log.append({**job, 'status': 'failed', 'error': f'{type(e).__name__}: {e}'})
            print(f'{tag}: FAILED {type(e).__name__}: {e}', file=sys.stderr, flush=True)
        finally:
            (folder / '.lock').unlink(missing_ok=True)
    return log


# ---------------------------------------------------------------- tables

def summary(values: dict) -> dict:
    v = np.asarray(list(values.values()), dtype=np.float64)
    return {'mean': float(v.mean()), 'min': float(v.min()), 'max': float(v.max()),
            'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0, 'n': len(v), 'per_seed': {str(k): values[k] for k in sorted(values)}}


def collect(jobs: list[dict], data: Path | None = None) -> tuple[dict, dict, list]:
    "values[task][column][set/variant][measure][seed], the input's scores, and the folders read (data paths as $MDF_LOSS_DATA)."
    values, inputs, read = {}, {}, []
    for job in jobs:
        f = Path(job['dir']) / 'results.json'
        if not f.is_file(): continue
        res = json.loads(f.read_text())
        tables = res['tables'][job['network']]
        read.append({'dir': job['dir'], 'column': job['column'], 'task': job['task'], 'seed': job['seed'],
                     'command': portable(res['command'], data), 'date': res['date'], 'seconds': round(res['seconds'], 1),
                     'torch_threads': res['machine'].get('torch_threads')})
        for key, rows in tables.items():
            for row in rows:
                if row['run'] == 'input':
                    for m in MEASURES: inputs.setdefault(job['task'], {}).setdefault(key, {})[m] = row['mean'][m]
                    continue
                for m in MEASURES:
                    (values.setdefault(job['task'], {}).setdefault(job['column'], {}).setdefault(key, {})
                     .setdefault(m, {})[job['seed']]) = row['mean'][m]
    return values, inputs, read


def cells(values: dict) -> dict:
    "Per task, column, set and measure: mean, spread over seeds, and the margin against L1 of the same seed."
    out = {}
    for task, cols in values.items():
        l1 = cols.get('l1', {})
        for col, keys in cols.items():
            for key, ms in keys.items():
                for m, per_seed in ms.items():
                    c = summary(per_seed)
                    ref = l1.get(key, {}).get(m, {})
                    common = [s for s in per_seed if s in ref]
                    if col != 'l1' and common:
                        c['vs_l1'] = summary({s: per_seed[s] - ref[s] for s in common})
                    out.setdefault(task, {}).setdefault(col, {}).setdefault(key, {})[m] = c
    return out


def versus(own: dict, other: dict) -> dict:
    "Own loss against another one, seed by seed and by the ranges over seeds."
    common = sorted(set(own['per_seed']) & set(other['per_seed']))
    diffs = [own['per_seed'][s] - other['per_seed'][s] for s in common]
    gap_up = own['min'] - other['max']    # > 0: the own loss's worst seed beats the other's best
    gap_down = other['min'] - own['max']  # > 0: the other's worst seed beats the own loss's best
    return {'mean_diff': own['mean'] - other['mean'], 'paired_diffs': diffs,
            'wins_every_seed': bool(diffs) and all(d > 0 for d in diffs), 'beyond_spread': gap_up > 0,
            'loses_beyond_spread': gap_down > 0, 'gap': gap_up if gap_up > 0 else -gap_down if gap_down > 0 else 0.0}


def diagonal(table: dict, own_of, rivals_of, key_of) -> list[dict]:
    "For each task, set and measure: does the task's own loss beat each rival beyond the seed spread?"
    rows = []
    for task in TASKS:
        own_col = own_of(task)
        if task not in table or own_col not in table[task]: continue
        for s in SETS:
            key = key_of(task, s)
            for m in MEASURES:
                own = table[task][own_col].get(key, {}).get(m)
                if own is None: continue
                vs = {}
                for r in rivals_of(task):
                    other = table[task].get(r, {}).get(key, {}).get(m)
                    if other is not None: vs[r] = versus(own, other)
                if not vs: continue
                verdict = ('wins' if all(v['beyond_spread'] for v in vs.values()) else
                           'loses' if any(v['loses_beyond_spread'] for v in vs.values()) else 'within spread')
                rows.append({'task': task, 'set': key, 'measure': m, 'own': own_col, 'own_mean': own['mean'],
                             'seeds': own['n'], 'versus': vs, 'verdict': verdict})
    return rows


def key_of(task: str, s: str, variant: str | None = None) -> str:
    v = variant or PRIMARY_VARIANT.get(task)
    return f'{s}/{v}' if v else s


def tally(rows: list[dict]) -> dict:
    return {v: sum(r['verdict'] == v for r in rows) for v in ('wins', 'within spread', 'loses')} | {'cells': len(rows)}


# ---------------------------------------------------------------- paired analysis

FAMILIES = {  # the files of a family and, per task, the family's own file for that task
    'ours': {'files': [f'ours-{t}' for t in TASKS], 'own': {t: f'ours-{t}' for t in TASKS}},
    'authors': {'files': list(AUTHORS), 'own': AUTHORS_OWN},
}
PAIRS = {  # own loss against which rivals, per task
    'ours': (lambda t: f'ours-{t}', lambda t: [f'ours-{u}' for u in TASKS if u != t]),
    'authors': (lambda t: AUTHORS_OWN[t], lambda t: [c for c in AUTHORS if c != AUTHORS_OWN[t]]),
    'ours_vs_authors': (lambda t: f'ours-{t}', lambda t: [AUTHORS_OWN[t]]),
}
PAIR_TITLES = {'ours': 'our own task loss against our other two task losses',
               'authors': "the authors' task file against their other file",
               'ours_vs_authors': "our task loss against the authors' loss for the same task"}


def values_from_table(table: dict) -> dict:
    "values[task][column][key][measure][seed] from a recorded table's per-seed values (seeds as ints where they are digits)."
    seed = lambda k: int(k) if str(k).lstrip('-').isdigit() else k
    return {task: {col: {key: {m: {seed(k): v for k, v in c['per_seed'].items()} for m, c in ms.items()}
                         for key, ms in keys.items()} for col, keys in cols.items()} for task, cols in table.items()}


def per_seed(table: dict, task: str, col: str, key: str, m: str) -> dict | None:
    c = table.get(task, {}).get(col, {}).get(key, {}).get(m)
    return None if c is None else {str(k): v for k, v in c['per_seed'].items()}


def paired_pairs(table: dict, own_of, rivals_of, sets, measures) -> list[dict]:
    "For each task, set and measure: the own loss against each rival, paired by seed (stats.paired)."
    rows = []
    for task in TASKS:
        for s in sets:
            key = key_of(task, s)
            for m in measures:
                own = per_seed(table, task, own_of(task), key, m)
                if own is None: continue
                for r in rivals_of(task):
                    other = per_seed(table, task, r, key, m)
                    if other is None: continue
                    rows.append({'task': task, 'set': s, 'key': key, 'measure': m, 'own': own_of(task), 'rival': r,
                                 'own_mean': float(np.mean(list(own.values()))), **stats.paired(own, other)})
    return rows


def index_per_seed(table: dict, family: dict, s: str, m: str, tasks=TASKS, weighting: str = 'file') -> dict | None:
    """Per seed: the family's own file minus the mean of its other files, averaged over tasks.

    weighting 'file': first over the tasks each file owns, then over the files (each file counts once, so that a file
    that is better everywhere, a main effect, cancels out); 'task': plainly over the tasks. The two agree when every
    file owns exactly one task (ours); for the authors' two files, one of which owns two tasks, only 'file' cancels
    the main effect ('task' keeps a third of it)."""
    files, own = family['files'], family['own']
    by_task = {}
    for t in tasks:
        cols = {c: per_seed(table, t, c, key_of(t, s), m) for c in files}
        if any(v is None for v in cols.values()): return None
        seeds = set.intersection(*(set(v) for v in cols.values()))
        by_task[t] = {k: cols[own[t]][k] - float(np.mean([cols[c][k] for c in files if c != own[t]])) for k in seeds}
    seeds = sorted(set.intersection(*(set(v) for v in by_task.values())), key=stats.seed_order)
    if weighting == 'task':
        return {k: float(np.mean([by_task[t][k] for t in tasks])) for k in seeds}
    owners = [f for f in files if any(own[t] == f for t in tasks)]
    return {k: float(np.mean([np.mean([by_task[t][k] for t in tasks if own[t] == f]) for f in owners])) for k in seeds}


INTERACTIONS = {  # name -> (family, tasks, weighting, definition)
    'ours': ('ours', TASKS, 'file', "per seed, the mean over the three tasks of (the task's own loss minus the mean of our other "
             "two losses); each file owns one task, so a file that is better (or worse) everywhere cancels out"),
    'authors': ('authors', TASKS, 'file', "per seed, the mean over the authors' two files of the mean over the tasks the file owns "
                "(official-sisr: denoise and SR; official-jpeg: JPEG) of (own file minus the other file); each file counts "
                "once, so the main effect (one file better everywhere) cancels out"),
    'authors_jpeg_sisr': ('authors', ('jpeg', 'sisr'), 'file', "as `authors`, on JPEG and SR only, where each file owns one task "
                          "(the mean over the two tasks of own minus other)"),
    'authors_by_task': ('authors', TASKS, 'task', "the plain mean over the three tasks of (own file minus the other file); "
                        "official-sisr owns two of the three tasks, so this keeps a third of the main effect (official-sisr "
                        "minus official-jpeg): not an interaction index, shown to explain the difference"),
}


def interactions(table: dict, sets, measures) -> dict:
    "The interaction indices (own loss minus the family's others, main effects cancelled), per set and measure."
    out = {}
    for name, (fam, tasks, weighting, definition) in INTERACTIONS.items():
        cells = {}
        for s in sets:
            for m in measures:
                v = index_per_seed(table, FAMILIES[fam], s, m, tasks, weighting)
                if v is not None: cells.setdefault(s, {})[m] = stats.paired(v)
        if cells: out[name] = {'family': fam, 'tasks': list(tasks), 'weighting': weighting, 'definition': definition, 'cells': cells}
    return out


def main_effects(table: dict, sets, measures) -> dict:
    "Per family, set, measure and file: per seed, the mean over tasks of (file minus the family mean); its interval."
    out = {}
    for fam, spec in FAMILIES.items():
        files = spec['files']
        for s in sets:
            for m in measures:
                by_task = {}
                for t in TASKS:
                    cols = {c: per_seed(table, t, c, key_of(t, s), m) for c in files}
                    if any(v is None for v in cols.values()): break
                    seeds = set.intersection(*(set(v) for v in cols.values()))
                    by_task[t] = {f: {k: cols[f][k] - float(np.mean([cols[c][k] for c in files])) for k in seeds} for f in files}
                else:
                    for f in files:
                        seeds = sorted(set.intersection(*(set(by_task[t][f]) for t in TASKS)), key=stats.seed_order)
                        r = stats.paired({k: float(np.mean([by_task[t][f][k] for t in TASKS])) for k in seeds})
                        r['per_task_mean'] = {t: float(np.mean(list(by_task[t][f].values()))) for t in TASKS}
                        r['tasks_above_family_mean'] = sum(v > 0 for v in r['per_task_mean'].values())
                        out.setdefault(fam, {}).setdefault(s, {}).setdefault(m, {})[f] = r
    return out


def study_detectable(rows: list[dict], sets, measures) -> dict:
    """What n seeds can resolve, from the SD of the paired differences pooled over comparisons (stats.pooled_sd).

    'by_task': per task, set and measure, pooled over every pairwise comparison there (own against each rival, in all
    the pairwise tables); 'overall': per set and measure, pooled over the tasks too."""
    def det(mine):
        mine = [r for r in mine if r['sd'] is not None]
        if not mine: return None
        return {**stats.detectable(stats.pooled_sd([r['sd'] for r in mine]), min(r['n'] for r in mine)), 'comparisons': len(mine)}
    out = {'by_task': {}, 'overall': {}}
    for s in sets:
        for m in measures:
            here = [r for r in rows if r['set'] == s and r['measure'] == m]
            if (d := det(here)) is not None: out['overall'].setdefault(s, {})[m] = d
            for t in TASKS:
                if (d := det([r for r in here if r['task'] == t])) is not None: out['by_task'].setdefault(t, {}).setdefault(s, {})[m] = d
    return out


def pair_tally(rows: list[dict]) -> dict:
    return {v: sum(r['verdict'] == v for r in rows) for v in stats.VERDICTS} | {'comparisons': len(rows)}


def analyse(table: dict, sets=SETS, measures=MEASURES) -> dict:
    "The paired analysis of the study: pairwise verdicts, interaction indices, main effects, detectable differences."
    pairs = {name: paired_pairs(table, own_of, rivals_of, sets, measures) for name, (own_of, rivals_of) in PAIRS.items()}
    det = study_detectable([r for rows in pairs.values() for r in rows], sets, measures)
    for r in (r for rows in pairs.values() for r in rows):  # a verdict whose mean is below what the design resolves
        d = det['by_task'].get(r['task'], {}).get(r['set'], {}).get(r['measure'], {}).get('half_width')
        r['below_detectable'] = None if d is None or r['mean'] is None else abs(r['mean']) < d
    return {'rule': "per-seed differences (the seeds pair the runs: same initial weights, patches and test images); their "
                    "mean with a 95% Student-t interval over the seeds (n-1 degrees of freedom); win when the interval lies "
                    "above 0, loss when below, tie when it contains 0 (higher is better for PSNR, SSIM and HaarPSI). "
                    "Detectable difference: the interval's half-width t(0.975, n-1) * sd / sqrt(n), from the SD of the paired "
                    "differences pooled over the pairwise comparisons of a task, set and measure ('by_task') or of a set and "
                    "measure ('overall'); MDE: (t(0.975, n-1) + t(0.80, n-1)) * sd / sqrt(n), 80% power.",
            't_quantiles': stats.T_SOURCE,
            'pairs': pairs, 'pairs_tally': {k: pair_tally(v) for k, v in pairs.items()},
            'detectable': det,
            'interaction': interactions(table, sets, measures),
            'main_effects': main_effects(table, sets, measures)}


# ---------------------------------------------------------------- report

def cell_text(c: dict | None, m: str, margin: bool = False) -> str:
    if c is None: return 'not run'
    if margin:
        if 'vs_l1' not in c: return ''
        d = c['vs_l1']
        return f"{SFMT[m].format(d['mean'])} ({SFMT[m].format(d['min'])}..{SFMT[m].format(d['max'])})"
    rng = f" ({FMT[m].format(c['min'])}..{FMT[m].format(c['max'])})" if c['n'] > 1 else ''
    return f"{FMT[m].format(c['mean'])}{rng}"


def markdown(rep: dict) -> str:
    t, files, cols = rep['table'], rep['losses'], rep['columns']
    ours = [c for c in cols if c.startswith('ours-') and '*' not in c]
    theirs = [c for c in cols if c in AUTHORS]
    rest = [c for c in cols if c not in ours and c not in theirs]
    order = ours + theirs + rest
    L = ['# Task specificity in restoration: each task trained with each task loss', '',
         "One command regenerates everything (the experiments it finds done are skipped):", '', f"    {rep['command']}", '']
    if rep.get('report'):
        L += [f"This report was rebuilt on {rep['report']['date']}, without training and without the experiment folders, from "
              f"the per-seed values recorded in its JSON (t quantiles from {rep['report']['t_quantiles']}):", '',
              f"    {rep['report']['command']}", '']
    L += [
         f"- date: {rep['date']}; machine: {rep['machine']['cpu_model']}, {rep['machine']['cpu_count']} cores, "
         f"torch {rep['versions']['torch']}, {'/'.join(map(str, rep['threads_per_experiment'])) or '?'} "
         f"torch thread(s) per experiment; mdf_loss {rep['versions']['mdf_loss']}",
         f"- load average when this report was made: {rep['load_average']}; the experiments took "
         f"{rep['experiment_seconds'] / 3600:.1f} h of wall time in all ({len(rep['experiments'])} folders; per-folder dates, "
         "commands and times are in the JSON)",
         f"- protocol: `{rep['preset']}` preset, finetune: {rep['steps_note']}. Networks: DnCNN for denoise and JPEG, SRResNet "
         f"for x4 SR. Training pool: CSun_Hays80 ({rep['train_images']} photos, as the preset scales them). Test: the first "
         f"{rep['max_test_images']} images of CSet14 and of CBSD68, whole images. JPEG networks train on q10 and q20 "
         "(drawn per image); the matrix shows q10, q20 is beside it.",
         f"- seeds: {', '.join(map(str, rep['seeds']))}. A cell is the mean over seeds, with the range (min..max) over seeds.", '',
         '## The losses', '', '| column | file | sha256 (first 12) | task in file | discriminators used | how it was trained |',
         '|---|---|---|---|---|---|']
    for c in order:
        if c in files:
            f = files[c]
            how = (f"the authors' published file {f['source_file']}" if c in AUTHORS else f"`{f['command']}`")
            L.append(f"| {c} | `{f['path']}` | `{f['sha256'][:12]}` | {f['task']} | {f['used']} of {f['discriminators']} | {how} |")
    L += ['', "`official-sisr` is the authors' SISR file, byte-identical to their denoising file: it is their loss for denoise "
          "and for SR. `l1` is L1 continued for the second half at the same reduced learning rate.", '']
    sets, measures = rep.get('sets', SETS), rep.get('measures', MEASURES)
    for s in sets:
        for m in measures:
            L += [f"## {s}: {m.upper() if m != 'haarpsi' else 'HaarPSI'}", '',
                  '| task \\ loss | ' + ' | '.join(order) + ' | input |', '|---|' + '---|' * (len(order) + 1)]
            for task in TASKS:
                if task not in t: continue
                key = key_of(task, s)
                row = []
                for c in order:
                    txt = cell_text(t[task].get(c, {}).get(key, {}).get(m), m)
                    row.append(f'**{txt}**' if c == f'ours-{task}' else txt)
                inp = rep['inputs'].get(task, {}).get(key, {}).get(m)
                L.append(f"| {task}{' q10' if task == 'jpeg' else ''} | " + ' | '.join(row) + f" | {FMT[m].format(inp) if inp is not None else ''} |")
            L += ['', 'Margin against L1 of the same seed, mean (min..max):', '',
                  '| task \\ loss | ' + ' | '.join(c for c in order if c != 'l1') + ' |', '|---|' + '---|' * len([c for c in order if c != 'l1'])]
            for task in TASKS:
                if task not in t: continue
                key = key_of(task, s)
                L.append(f"| {task}{' q10' if task == 'jpeg' else ''} | " +
                         ' | '.join(cell_text(t[task].get(c, {}).get(key, {}).get(m), m, True) for c in order if c != 'l1') + ' |')
            L.append('')
    if 'jpeg' in t:
        L += ['## JPEG q20 (beside the matrix)', '', '| set | measure | ' + ' | '.join(order) + ' |', '|---|---|' + '---|' * len(order)]
        for s in sets:
            for m in measures:
                L.append(f'| {s} | {m} | ' + ' | '.join(cell_text(t['jpeg'].get(c, {}).get(key_of('jpeg', s, 'q20'), {}).get(m), m) for c in order) + ' |')
        L.append('')
    if rep.get('paired'): L += paired_markdown(rep['paired'], sets, measures, len(rep['seeds']))
    L += ['## Verdict', ''] + [f"  - {line[2:]}" if line.startswith('  ') else f'- {line}' for line in rep['verdict_lines']] + ['']
    L += ['## Does the diagonal win beyond the seed spread? (the earlier range rule, kept for comparison)', '',
          "This was the report's verdict before the paired analysis above replaced it. For each task, test set and measure, "
          "the task's own loss against each other task loss. It **wins** when its worst seed beats the rival's best seed for "
          "every rival (the ranges over seeds do not overlap), **loses** when some rival's worst seed beats its best, and is "
          "**within spread** otherwise. The gap is the distance between the ranges (0 when they overlap). The rule ignores "
          "the pairing by seed (the seed-to-seed variation that both losses share widens both ranges), demands a win against "
          "every rival at once, and has no stated error rate: read the paired verdicts instead.", '']
    for title, rows in (('Our losses (the 3 x 3 matrix)', rep['diagonal']['ours']),
                        ("The authors' files (SISR = denoising file, against JPEG; JPEG against SISR)", rep['diagonal']['authors']),
                        ("Our task loss against the authors' loss for the same task", rep['diagonal']['ours_vs_authors'])):
        L += [f'### {title}', '', '| task | set | measure | own loss: mean | rival: mean difference, gap, paired differences | verdict |',
              '|---|---|---|---|---|---|']
        for r in rows:
            m = r['measure']
            vs = '; '.join(f"{k}: {SFMT[m].format(v['mean_diff'])}, gap {SFMT[m].format(v['gap'])}, paired "
                           f"[{', '.join(SFMT[m].format(d) for d in v['paired_diffs'])}]" for k, v in r['versus'].items())
            L.append(f"| {r['task']} | {r['set']} | {m} | {r['own']}: {FMT[m].format(r['own_mean'])} | {vs} | **{r['verdict']}** |")
        L.append('')
    L += [f"Earlier rule, tally over (task, set, measure) cells: " + '; '.join(
        f"{PAIR_TITLES[k]}: wins {v['wins']}, within spread {v['within spread']}, loses {v['loses']} of {v['cells']}"
        for k, v in rep['diagonal_tally'].items() if v['cells']) + '.', '']
    if rep['missing']:
        L += ['## Not run', '', f"{len(rep['missing'])} experiment folder(s) have no results yet: " +
              ', '.join(f"{j['task']}/seed{j['seed']}/{j['column']}" for j in rep['missing']) + '.', '']
    if rep.get('failed'):
        L += ['## Failed', ''] + [f"- {j['task']} seed {j['seed']} {j['column']}: {j['error']}" for j in rep['failed']] + ['']
    return '\n'.join(L) + '\n'


def wtl(t: dict) -> str:
    "'4 wins, 1 tie, 0 losses' from a tally."
    n_of = lambda k, w: f"{k} {w}{'' if k == 1 else ('es' if w == 'loss' else 's')}"
    return f"{n_of(t['win'], 'win')}, {n_of(t['tie'], 'tie')}, {n_of(t['loss'], 'loss')}"


def _ci(r: dict, m: str) -> str:
    return stats.interval_text(r, DFMT[m])


def _det(d: dict | None, m: str) -> str:
    if not d or d.get('half_width') is None: return 'n/a'
    return f"{UFMT[m].format(d['half_width'])} / {UFMT[m].format(d['mde'])}"


def _seeds(r: dict, m: str) -> str:
    return ', '.join(DFMT[m].format(v) for v in r['per_seed'].values())


def paired_markdown(an: dict, sets, measures, nseeds: int) -> list[str]:
    "The Markdown of the paired analysis: interaction indices, main effects, pairwise verdicts, detectable differences."
    L = ['## Paired analysis (the verdicts of this report)', '',
         f"Every comparison is paired by seed, as the study was built: for one seed, every column starts from the same L1 "
         f"checkpoint, sees the same patches and is scored on the same test images. A comparison is the mean of the "
         f"{nseeds} per-seed differences with its 95% Student-t interval (n-1 = {max(nseeds - 1, 0)} degrees of freedom; t "
         f"quantiles from {an['t_quantiles']}); **win** when the interval lies above 0, **loss** when below, **tie** when it "
         "contains 0 (`benchmarks/stats.py`, the rule of every report). Signs: how many seeds have a positive / negative "
         "difference. Detectable: the smallest mean difference this design can call a win or a loss, the interval's "
         "half-width t(0.975, n-1) * sd / sqrt(n), then the difference found with 80% power, (t(0.975, n-1) + t(0.80, n-1)) "
         "* sd / sqrt(n); for the indices and main effects from their own SD, for the pairwise comparisons from the SD of "
         "the paired differences pooled over all the pairwise comparisons of the same task, set and measure (4 of them: "
         "two in our matrix, one among the authors' files, one of ours against theirs). JPEG is q10, the matrix's variant.", '',
         '### Interaction index: is the own loss better than the family\'s others, beyond what each file does everywhere?', '']
    for name, it in an['interaction'].items():
        L += [f"**{name}**: {it['definition']}.", '',
              '| set | measure | index: mean (95% CI) | per seed | signs | verdict | detectable / MDE 80% |', '|---|---|---|---|---|---|---|']
        for s in sets:
            for m in measures:
                r = it['cells'].get(s, {}).get(m)
                if r is None: continue
                L.append(f"| {s} | {MNAME[m]} | {_ci(r, m)} | {_seeds(r, m)} | {stats.signs_text(r)} | **{r['verdict']}** | "
                         f"{_det(r.get('detectable'), m)} |")
        L.append('')
    L += ['### Main effects: each file against its family\'s mean, over all tasks', '',
          "Per seed, the mean over the three tasks of (file minus the mean of the family's files on that task); then the "
          "interval over seeds. A file with a positive main effect is better than its siblings whatever the task; the "
          "interaction index above cancels these. Per task: the mean over seeds of the same difference on each task.", '',
          '| family | set | measure | file | main effect: mean (95% CI) | verdict | per task (denoise, jpeg, sisr) | detectable / MDE 80% |',
          '|---|---|---|---|---|---|---|---|']
    for fam, per_set in an['main_effects'].items():
        for s in sets:
            for m in measures:
                for f, r in per_set.get(s, {}).get(m, {}).items():
                    per_task = ', '.join(DFMT[m].format(r['per_task_mean'][t]) for t in TASKS)
                    L.append(f"| {fam} | {s} | {MNAME[m]} | {f} | {_ci(r, m)} | **{r['verdict']}** | {per_task} | {_det(r.get('detectable'), m)} |")
    L.append('')
    L += ['### Pairwise: the task\'s own loss against each rival', '']
    for name, rows in an['pairs'].items():
        if not rows: continue
        k = an['pairs_tally'][name]
        L += [f"**{PAIR_TITLES[name]}**: {wtl(k)} of {k['comparisons']} paired "
              "comparisons. A verdict marked † has a mean below the detectable difference of its row: its own interval is "
              "narrow because its SD (from 3 seeds) is smaller than the pooled one.", '',
              '| task | set | measure | own: mean | rival | own minus rival: mean (95% CI) | per seed | signs | verdict | detectable / MDE 80% |',
              '|---|---|---|---|---|---|---|---|---|---|']
        det = an['detectable']['by_task']
        for r in rows:
            m = r['measure']
            L.append(f"| {r['task']} | {r['key']} | {MNAME[m]} | {r['own']}: {FMT[m].format(r['own_mean'])} | {r['rival']} | {_ci(r, m)} | "
                     f"{_seeds(r, m)} | {stats.signs_text(r)} | **{r['verdict']}**{' †' if r.get('below_detectable') and r['verdict'] != 'tie' else ''} | "
                     f"{_det(det.get(r['task'], {}).get(r['set'], {}).get(m), m)} |")
        L.append('')
    L += ['### Detectable differences of one loss against another', '',
          'SD of the per-seed differences pooled over the pairwise comparisons (all three tables), the 95% half-width it '
          'gives with these seeds (the smallest mean difference that can come out as a win or a loss), and the MDE at 80% power.', '',
          '| task | set | measure | comparisons | pooled SD | n | detectable (half-width) | MDE 80% |', '|---|---|---|---|---|---|---|---|']
    det = an['detectable']
    for t in [*TASKS, 'all tasks']:
        for s in sets:
            for m in measures:
                d = (det['overall'] if t == 'all tasks' else det['by_task'].get(t, {})).get(s, {}).get(m)
                if d is None or d.get('half_width') is None: continue
                L.append(f"| {t} | {s} | {MNAME[m]} | {d['comparisons']} | {UFMT[m].format(d['sd'])} | {d['n']} | "
                         f"{UFMT[m].format(d['half_width'])} | {UFMT[m].format(d['mde'])} |")
    L.append('')
    return L


def verdict_lines(an: dict, seeds: int, sets=SETS, measures=MEASURES) -> list[str]:
    "The verdict, as sentences built from the paired analysis (whatever it says)."
    out = []
    unit = lambda m: ' dB' if m == 'psnr' else ''
    name = lambda m: MNAME[m].split(' ')[0]

    def index_line(key: str, what: str):
        it = an['interaction'].get(key)
        if not it: out.append(f'{what}: not measured (runs missing).'); return
        cells = [(s, m, it['cells'][s][m]) for s in sets for m in measures if m in it['cells'].get(s, {})]
        parts = [f"{s} {name(m)} {_ci(r, m)}{unit(m)} {r['verdict']}" for s, m, r in cells]
        res = [f"{s} {name(m)} ({r['verdict']})" for s, m, r in cells if r['verdict'] != 'tie']
        out.append(f"{what}: {'; '.join(parts)}. " + (f"The interval excludes 0 in {len(res)} of {len(cells)}: {', '.join(res)}."
                                                        if res else f"Every one of the {len(cells)} intervals contains 0: no task-specific advantage that {seeds} seeds can resolve."))

    if seeds < 2:
        out.append(f'With {seeds} seed(s) there is no interval: every paired verdict is a tie by construction, whatever the means.')
    index_line('ours', 'Interaction index of our losses (own task loss minus our other two, averaged over the tasks; main effects cancel)')
    index_line('authors', "Interaction index of the authors' files (own file minus the other, each file's tasks weighted so that the main effect cancels)")
    index_line('authors_jpeg_sisr', "The same on JPEG and SR only (each file owns one task)")
    for fam, per_set in an['main_effects'].items():
        found = [f"{f} {DFMT[m].format(r['mean'])}{unit(m)} on {s} {name(m)} ({r['verdict']}, above the family mean in "
                 f"{r['tasks_above_family_mean']} of 3 tasks)" for s in sets for m in measures
                 for f, r in per_set.get(s, {}).get(m, {}).items() if r['verdict'] != 'tie']
        out.append(f"Main effects, {fam} (file minus its family's mean over all tasks): " +
                   ('; '.join(found) + '; every other (file, set, measure) is a tie.' if found else 'every one is a tie.'))
    for key, rows in an['pairs'].items():
        if not rows: out.append(f'{PAIR_TITLES[key]}: not measured (runs missing).'); continue
        k = an['pairs_tally'][key]
        out.append(f"{PAIR_TITLES[key]}: {wtl(k)} of {k['comparisons']} paired comparisons (task, set, measure, rival).")
        for task in TASKS:
            mine = [r for r in rows if r['task'] == task]
            if mine:
                t = pair_tally(mine)
                out.append(f"  {task}: {wtl(t)} of {t['comparisons']}.")
    decided = [r for rows in an['pairs'].values() for r in rows if r['verdict'] != 'tie']
    small = [r for r in decided if r.get('below_detectable')]
    if small:
        out.append(f"{len(small)} of the {len(decided)} pairwise wins and losses have a mean below the detectable difference pooled "
                   "for their task, set and measure: they rest on an SD from 3 seeds smaller than the pooled one (either these "
                   "pairs really vary less from seed to seed, or the 3 seeds happened to agree; 3 seeds cannot tell which): " +
                   ', '.join(f"{r['task']} {r['key']} {name(r['measure'])} {r['own']} vs {r['rival']} ({r['verdict']})" for r in small) + '.')
    ncomp = sum(len(v) for v in an['pairs'].values())
    if ncomp and seeds >= 2:
        out.append(f"{ncomp} paired comparisons at 95% each: were no loss different from another, about {0.05 * ncomp:.1f} of them "
                   "would still come out as a win or a loss by chance; a lone verdict is weak evidence.")
    det = an['detectable']
    dets = []
    for sname in sets:
        for m in measures:
            d = det['overall'].get(sname, {}).get(m)
            if not d or d.get('half_width') is None: continue
            per = [det['by_task'][t][sname][m]['half_width'] for t in TASKS if det['by_task'].get(t, {}).get(sname, {}).get(m, {}).get('half_width') is not None]
            dets.append(f"{sname} {name(m)} {UFMT[m].format(d['half_width'])}{unit(m)} (MDE {UFMT[m].format(d['mde'])}; "
                        f"{UFMT[m].format(min(per))} to {UFMT[m].format(max(per))} by task)")
    ind = [f"{sname} {name(m)} {UFMT[m].format(r['half_width'])}{unit(m)}" for sname in sets for m in measures
           if (r := an['interaction'].get('ours', {}).get('cells', {}).get(sname, {}).get(m)) and r.get('half_width') is not None]
    if dets:
        out.append(f"With {seeds} seeds the study cannot resolve effects smaller than its detectable difference. For one loss "
                   f"against another (SD pooled over all the pairwise comparisons), the 95% half-width is {'; '.join(dets)}; "
                   "the MDE is the true difference found 4 times in 5." + (f" For our interaction index: {'; '.join(ind)}." if ind else '')
                   + " A task-specific effect smaller than these may exist: this study can neither show nor exclude it.")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--ours', default='denoise,jpeg,sisr',
                   help='our task losses: shipped names, or task=FILE.safetensors (default: the shipped denoise,jpeg,sisr)')
    p.add_argument('--authors', default='official-sisr,official-jpeg', help="the authors' files to run ('' for none)")
    p.add_argument('--columns', default=DEFAULT_COLUMNS, help=f'which losses to train (default {DEFAULT_COLUMNS})')
    p.add_argument('--tasks', default=','.join(TASKS))
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--preset', default='quick', choices=('smoke', 'quick', 'paper'))
    p.add_argument('--steps', type=int, default=None, help="training steps per run, both halves (default: the preset's)")
    p.add_argument('--max-train-images', type=int, default=None)
    p.add_argument('--max-test-images', type=int, default=10, help='first N images of CSet14 and of CBSD68 (default 10)')
    p.add_argument('--sum-weight', type=float, default=None, help='also train L1 + w*MDF for each MDF column at this fixed w')
    p.add_argument('--share-pretrain', action=argparse.BooleanOptionalAction, default=True,
                   help="start each loss's second half from the L1 column's first half instead of training it again")
    p.add_argument('--runs', default='runs/task_specificity', help='root of the experiment folders (keep it out of git)')
    p.add_argument('--data', default=None, help='shared data folder (default: $MDF_LOSS_DATA or ../shared/data)')
    p.add_argument('--aggregate-only', action='store_true', help='train nothing; rebuild the tables from the folders that exist')
    p.add_argument('--report-only', metavar='JSON', default=None,
                   help='train nothing and read no experiment folder: rebuild the analysis and the report from the per-seed '
                        'values recorded in a JSON this script wrote (its date, machine, experiments and commands are kept)')
    p.add_argument('--out', default=None, help='write OUT.json and OUT.md')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (1 on a busy machine)')
    p.add_argument('--device', default=None, help="torch device of the training ('cuda' on a GPU; default the CPU)")
    a = p.parse_args(argv)
    if a.report_only: return report_only(a.report_only, a.out, argv)
    if a.threads: torch.set_num_threads(a.threads)
    a.tasks = [s.strip() for s in a.tasks.split(',') if s.strip()]
    if not a.tasks or set(a.tasks) - set(TASKS): p.error(f'--tasks must be among {TASKS}')
    try: a.seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
    except ValueError: p.error('--seeds takes integers such as 0,1,2')
    authors = [s.strip() for s in a.authors.split(',') if s.strip()]
    if set(authors) - set(AUTHORS): p.error(f'--authors must be among {list(AUTHORS)}')
    data = Path(a.data) if a.data else data_dir(required=True)
    files = loss_files(a.ours, authors)
    jobs = plan(a, files)
    t0, load0 = time.time(), load_average()
    log = [] if a.aggregate_only else run_jobs(jobs, a, data)
    values, inputs, read = collect(jobs, data)
    table = cells(values)
    ours_cols = [f'ours-{t}' for t in TASKS]
    diag = range_diagonals(table)
    from mdf_loss.restoration.experiment import EXPERIMENT_PRESETS
    pre = EXPERIMENT_PRESETS[a.preset]
    steps = a.steps or pre['steps']
    rep = {'command': command_line(argv), 'date': now(), 'machine': {**machine(), 'device': a.device or 'cpu'},
           'versions': versions(),
           'threads_per_experiment': sorted({r['torch_threads'] for r in read if r.get('torch_threads')}), 'load_average': load_average(), 'load_average_at_start': load0,
           'seconds_this_call': round(time.time() - t0, 1),
           'experiment_seconds': sum(r['seconds'] for r in read),
           'preset': a.preset, 'steps': steps, 'max_test_images': a.max_test_images,
           'train_images': f"the first {a.max_train_images or pre['max_train_images']}" if (a.max_train_images or pre['max_train_images']) else 'all',
           'steps_note': f"{steps // 2} L1 steps (lr {pre['lr']:g}), then {steps - steps // 2} steps of the loss at lr {pre['lr'] / 10:g}; "
                         f"batch {pre['batch']} of {pre['patch']} px patches",
           'seeds': a.seeds, 'tasks': a.tasks, 'sets': list(SETS), 'measures': list(MEASURES),
           'columns': list(dict.fromkeys(j['column'] for j in jobs)),
           'losses': {c: {**f, 'path': display_path(f['path'])} for c, f in files.items()}, 'matrix_columns': ours_cols, 'primary_variant': PRIMARY_VARIANT,
           'table': table, 'inputs': inputs, 'diagonal': diag,
           'diagonal_tally': {k: tally(v) for k, v in diag.items()},
           'experiments': read,
           'missing': [{k: j[k] for k in ('task', 'seed', 'column', 'dir')} for j in jobs if not (Path(j['dir']) / 'results.json').is_file()],
           'failed': [{k: j[k] for k in ('task', 'seed', 'column', 'error')} for j in log if j.get('status') == 'failed'],
           'log': [{k: j.get(k) for k in ('task', 'seed', 'column', 'status', 'seconds')} for j in log]}
    rep['paired'] = analyse(table)
    rep['verdict_lines'] = verdict_lines(rep['paired'], paired_seeds(rep['paired']))
    text = json.dumps(rep, indent=1)
    print(text)
    if a.out: write_pair(a.out, text, markdown(rep))


def range_diagonals(table: dict) -> dict:
    "The earlier range rule (kept for comparison): own loss against its rivals by non-overlap of the ranges over seeds."
    return {name: diagonal(table, own_of, rivals_of, key_of) for name, (own_of, rivals_of) in PAIRS.items()}


def paired_seeds(an: dict) -> int:
    "How many seeds pair every comparison (the fewest over the comparisons)."
    return min((r['n'] for rows in an['pairs'].values() for r in rows), default=0)


def report_only(path: str, out: str | None, argv=None) -> dict:
    "Rebuild the tables, the analysis and the report from a recorded JSON's per-seed values: no training, no folders."
    rep = json.loads(Path(path).read_text())
    sets, measures = rep.get('sets', list(SETS)), rep.get('measures', list(MEASURES))
    table = cells(values_from_table(rep['table']))
    diag = range_diagonals(table)
    an = analyse(table, sets, measures)
    rep.update(table=table, diagonal=diag, diagonal_tally={k: tally(v) for k, v in diag.items()}, paired=an,
               verdict_lines=verdict_lines(an, paired_seeds(an), sets, measures),
               report={'command': command_line(argv), 'date': now(), 'from': display_path(path), 't_quantiles': stats.T_SOURCE})
    text = json.dumps(rep, indent=1)
    print(text)
    if out: write_pair(out, text, markdown(rep))
    return rep


if __name__ == '__main__':
    main()
