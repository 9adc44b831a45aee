"""Sensitivity (Spearman of loss vs distortion strength, per image) and task specificity (loss/MSE at matched PSNR)
of MDF losses on images they never saw (CBSD68, CSet14). Prints JSON; --md writes a markdown report.

Every registered task with a strength ladder takes part (mdf_loss.tasks); `--import MODULE` runs a module of yours
first, so that a task it registers is ranked too, and `--tasks` picks the tasks.

    python benchmarks/sensitivity.py --losses official-sisr,official-jpeg,random --per-set 10 --size 128 \
        --json benchmarks/results/sensitivity.json --md benchmarks/results/sensitivity.md
"""
import argparse
import importlib
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mdf_loss import MDFLoss, __version__
from mdf_loss.baselines import get_loss, register_loss
from mdf_loss.blocks import Discriminator, init_weights, width_schedule
from mdf_loss.runtime import data_dir, machine
from mdf_loss.sensitivity import benchmark_crops, sensitivity, specificity_table, task_specificity
from mdf_loss.tasks import task_names


def random_loss(seed=0):
    "Untrained discriminators (SinGAN initialisation, BatchNorm statistics at their defaults): the control."
    g = torch.Generator().manual_seed(seed)
    ds = [Discriminator(w) for w in width_schedule(9)]
    for d in ds: d.apply(lambda m: init_weights(m, g))
    return MDFLoss([d.eval() for d in ds])


register_loss('random', random_loss, summary='untrained discriminators: the control of this benchmark', replace=True)


def own_task(spec, loss, tasks):
    meta = getattr(loss, 'meta', {}) or {}
    return meta.get('task') if meta.get('task') in tasks else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--losses', default='official-sisr,official-jpeg,random',
                   help="comma-separated loss names (any that mdf_loss.baselines.get_loss takes, one registered by an "
                        "--import module included), .safetensors paths, or 'random': untrained discriminators, the control")
    p.add_argument('--data', default=None, help='shared data folder (default: $MDF_LOSS_DATA or ../shared/data)')
    p.add_argument('--per-set', type=int, default=10)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--psnr', type=float, default=27.0)
    p.add_argument('--json', default=None); p.add_argument('--md', default=None)
    p.add_argument('--import', dest='modules', action='append', default=[], metavar='MODULE',
                   help='import MODULE first (one that registers a task, say); repeatable')
    p.add_argument('--tasks', default=None, help='comma-separated tasks to rank (default: every registered task with a ladder)')
    p.add_argument('--specificity', action=argparse.BooleanOptionalAction, default=True, help='also measure task specificity')
    a = p.parse_args(argv)
    if os.getcwd() not in sys.path: sys.path.insert(0, os.getcwd())
    for m in a.modules: importlib.import_module(m)
    ladders = task_names('sensitivity')
    tasks = [t.strip() for t in a.tasks.split(',')] if a.tasks else ladders
    unknown = [t for t in tasks if t not in ladders]
    if unknown: sys.exit(f'unknown task(s) {unknown}: the registered tasks with a ladder are {ladders}')
    root = Path(a.data) if a.data else data_dir(required=True)
    crops = benchmark_crops(root / 'benchmarks', per_set=a.per_set, size=a.size)
    t0 = time.time()
    losses = {s: get_loss(s) for s in a.losses.split(',')}
    sens = {}
    for name, fn in losses.items():
        own = own_task(name, fn, tasks)
        sens[name] = {t: sensitivity(fn, crops, t) for t in ([own] if own else tasks)}
    spec = task_specificity({**losses, 'mse': lambda x, y: F.mse_loss(x, y)}, crops, target=a.psnr) if a.specificity else None
    out = dict(command='python ' + ' '.join([sys.argv[0], *(argv or sys.argv[1:])]),
               date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine()['cpu_model'],
               cores=os.cpu_count(), torch=torch.__version__, mdf_loss=__version__, images=list(crops), size=a.size,
               seconds=round(time.time() - t0, 1),
               sensitivity={n: {t: dict(fraction_spearman_1=sum(r['spearman'] == 1.0 for r in rows) / len(rows),
                                        per_image=rows) for t, rows in d.items()} for n, d in sens.items()},
               specificity=spec)
    print(json.dumps(out, indent=1))
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))
    if a.md:
        lines = ["# Sensitivity and task specificity", '', f"Command: `{out['command']}`  ",
                 f"Date: {out['date']}; machine: {out['machine']}, {out['cores']} cores; torch {out['torch']}; "
                 f"{len(crops)} centre crops of {a.size} px from CBSD68 and CSet14; {out['seconds']} s.", '',
                 '## Sensitivity: fraction of images whose loss rises strictly with strength (Spearman = 1)', '',
                 '| loss | ' + ' | '.join(tasks) + ' |', '|---|' + '---|' * len(tasks)]
        for n, d in out['sensitivity'].items():
            lines.append(f'| {n} | ' + ' | '.join(f"{d[t]['fraction_spearman_1']:.2f}" if t in d else '' for t in tasks) + ' |')
        if spec is not None:
            lines += ['', f'## Task specificity: loss / MSE at a matched PSNR of about {a.psnr} dB (mean over images)', '',
                      'Matched PSNR per distortion: ' + ', '.join(f'{t} {v:.2f} dB' for t, v in spec['_psnr'].items()), '',
                      specificity_table(spec), '']
        Path(a.md).write_text('\n'.join(lines))


if __name__ == '__main__':
    main()
