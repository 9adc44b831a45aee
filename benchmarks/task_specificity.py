"""Task specificity in restoration: the same network, trained under the same protocol with each task's MDF loss, for every task.

For each task (denoise sigma 25, JPEG q10/q20, SR x4) and seed, one `mdf-loss experiment` per loss with the finetune
protocol (L1 for half the steps, shared; then the loss for the other half at a tenth of the learning rate; the L1
column is L1 continued): L1, our three task losses and the authors' two files. Each experiment writes its own folder
under `--runs` and is skipped when its results.json exists, so the whole set can be run in pieces, by two processes
at once (a lock file marks a folder in progress). Then the tables: per task (row) and loss (column), the mean over
seeds of PSNR, SSIM and HaarPSI per test set, the spread over seeds and the margin against L1; the 3 x 3 matrix of
our losses, the authors' columns beside it, and the verdict: does the diagonal (the task's own loss) beat the other
task losses beyond the seed spread?

    python benchmarks/task_specificity.py --threads 1 --out benchmarks/results/task_specificity_restoration

prints JSON and writes OUT.json and OUT.md. `--ours denoise=FILE,jpeg=FILE,sisr=FILE` replaces the shipped losses by
loss files (their folders are keyed by the file's sha256, so a new file is trained afresh); `--aggregate-only`
rebuilds the tables from the folders that exist.
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
from mdf_loss.core import data_dir
from mdf_loss.weights import pretrained_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, display_path, portable, load_average, machine, now, sha256, versions, write_pair  # noqa: E402

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
         "One command regenerates everything (the experiments it finds done are skipped):", '', f"    {rep['command']}", '',
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
    for s in SETS:
        for m in MEASURES:
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
        for s in SETS:
            for m in MEASURES:
                L.append(f'| {s} | {m} | ' + ' | '.join(cell_text(t['jpeg'].get(c, {}).get(key_of('jpeg', s, 'q20'), {}).get(m), m) for c in order) + ' |')
        L.append('')
    L += ['## Does the diagonal win beyond the seed spread?', '',
          "For each task, test set and measure, the task's own loss against each other task loss. It **wins** when its worst "
          "seed beats the rival's best seed for every rival (the ranges over seeds do not overlap), **loses** when some rival's "
          "worst seed beats its best, and is **within spread** otherwise. The gap is the distance between the ranges "
          "(0 when they overlap). Paired: the differences seed by seed.", '']
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
    L += ['## Verdict', ''] + [f"  - {line[2:]}" if line.startswith('  ') else f'- {line}' for line in rep['verdict_lines']] + ['']
    if rep['missing']:
        L += ['## Not run', '', f"{len(rep['missing'])} experiment folder(s) have no results yet: " +
              ', '.join(f"{j['task']}/seed{j['seed']}/{j['column']}" for j in rep['missing']) + '.', '']
    if rep.get('failed'):
        L += ['## Failed', ''] + [f"- {j['task']} seed {j['seed']} {j['column']}: {j['error']}" for j in rep['failed']] + ['']
    return '\n'.join(L) + '\n'


def verdict_lines(diag: dict, seeds: int) -> list[str]:
    out = []
    for name, rows, what in (('ours', diag['ours'], 'our own task loss against our other two task losses'),
                             ('authors', diag['authors'], "the authors' task file against their other file"),
                             ('ours_vs_authors', diag['ours_vs_authors'], "our task loss against the authors' loss for the same task")):
        if not rows: out.append(f'{what}: not measured (runs missing).'); continue
        n = tally(rows)
        out.append(f"{what}: wins beyond the seed spread in {n['wins']} of {n['cells']} (task, set, measure) cells, "
                   f"loses beyond it in {n['loses']}, within the spread in {n['within spread']} ({seeds} seed(s)).")
        for task in TASKS:
            mine = [r for r in rows if r['task'] == task]
            if mine:
                k = tally(mine)
                out.append(f"  {task}: wins {k['wins']}, within spread {k['within spread']}, loses {k['loses']} of {k['cells']}.")
    if seeds < 2: out.append('With one seed there is no spread: "beyond the spread" then only means "better".')
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
    p.add_argument('--out', default=None, help='write OUT.json and OUT.md')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (1 on a busy machine)')
    p.add_argument('--device', default=None, help="torch device of the training ('cuda' on a GPU; default the CPU)")
    a = p.parse_args(argv)
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
    diag = {'ours': diagonal(table, lambda t: f'ours-{t}', lambda t: [c for c in ours_cols if c != f'ours-{t}'], key_of),
            'authors': diagonal(table, lambda t: AUTHORS_OWN[t], lambda t: [c for c in AUTHORS if c != AUTHORS_OWN[t]], key_of),
            'ours_vs_authors': diagonal(table, lambda t: f'ours-{t}', lambda t: [AUTHORS_OWN[t]], key_of)}
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
    nseeds = min((len(v['paired_diffs']) for r in diag['ours'] for v in r['versus'].values()), default=0)
    rep['verdict_lines'] = verdict_lines(diag, nseeds)
    text = json.dumps(rep, indent=1)
    print(text)
    if a.out: write_pair(a.out, text, markdown(rep))


if __name__ == '__main__':
    main()
