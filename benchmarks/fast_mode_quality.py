"""Do the cheaper MDF variants train restoration networks as well as the exact mode?

The restoration experiments' `quick` preset, scratch protocol, for one task: the same network, initial weights,
patches and steps, trained once per MDF mode (and per seed), then PSNR/SSIM on the test sets (the preset's first
`max_test_images` of each). The fast mode passes when its mean PSNR is within 0.1 dB and its mean SSIM within 0.005 of
the exact mode's on every test set (issue 6). The spread between seeds of the exact mode is reported beside it, so
that a difference can be read against the noise of training itself.

Modes: `exact` (the default MDFLoss), `pyramid` (mode='pyramid'), `bf16` (dtype=torch.bfloat16) and `scalesN`
(num_scales=N: fewer taps, the N coarsest-trained discriminators, which are also the narrowest).

Usage: python benchmarks/fast_mode_quality.py [--modes exact,pyramid,bf16,scales4] [--task denoise] [--seeds 0] [--steps N] [--out benchmarks/results/fast_mode_quality.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mdf_loss import MDFLoss
from mdf_loss.core import data_dir
from mdf_loss.restoration import (EXPERIMENT_PRESETS, PatchSampler, get_task, image_metrics, list_images, load_test_set,
                                  load_training_images, make_network, restore, train)

sys.path.insert(0, str(Path(__file__).parent))
from loss_speed import machine, report  # noqa: E402

TEST_SETS = ('CBSD68', 'CSet14')
PSNR_BAR, SSIM_BAR = 0.1, 0.005


def evaluate(model, tests: dict, spec) -> dict:
    "Mean PSNR and SSIM per test set (every variant of the task)."
    shave = spec.scale if spec.scale > 1 else 0
    out = {}
    for name, images in tests.items():
        for v, _ in spec.variants:
            ms = [image_metrics(restore(model, im.inputs[v]), im.clean, shave) for im in images]
            out[name if len(spec.variants) == 1 else f'{name}/{v}'] = {
                'psnr': float(np.mean([m['psnr'] for m in ms])), 'ssim': float(np.mean([m['ssim'] for m in ms])), 'n': len(ms)}
    return out


def make_loss(name: str, mode: str) -> MDFLoss:
    "The MDF loss of one mode (see the module docstring)."
    if mode in ('exact', 'pyramid'): return MDFLoss.from_pretrained(name, mode=mode)
    if mode == 'bf16': return MDFLoss.from_pretrained(name, dtype=torch.bfloat16)
    if mode.startswith('scales') and mode[6:].isdigit(): return MDFLoss.from_pretrained(name, num_scales=int(mode[6:]))
    raise SystemExit(f"unknown mode {mode!r}: use exact, pyramid, bf16 or scalesN")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--task', default='denoise')
    p.add_argument('--seeds', default='0', help='comma-separated seeds')
    p.add_argument('--modes', default='exact,pyramid')
    p.add_argument('--steps', type=int, default=None, help="override the preset's steps")
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--out')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    root = data_dir()
    if root is None: sys.exit('SKIPPED: shared data not found; set MDF_LOSS_DATA')
    cfg = dict(EXPERIMENT_PRESETS['quick'])
    if a.steps: cfg['steps'] = a.steps
    spec = get_task(a.task)
    network = spec.networks[0]
    train_paths = list_images(root/'benchmarks'/'CSun_Hays80', cfg['max_train_images'])
    images = load_training_images(train_paths, cfg['train_scale'], cfg['patch'])
    tests = {n: load_test_set(root/'benchmarks'/n, spec, 0, cfg['max_test_images']) for n in TEST_SETS}
    res = {'command': ' '.join([Path(sys.executable).name, *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           'task': a.task, 'network': f"{network} ({cfg['size']})", 'loss': f'official-{a.task}',
           'protocol': 'scratch, quick preset: ' + json.dumps({k: cfg[k] for k in ('patch', 'batch', 'steps', 'lr', 'train_scale', 'max_train_images', 'max_test_images')}),
           'load_average_start': os.getloadavg(), 'runs': []}
    for seed in [int(s) for s in a.seeds.split(',')]:
        for mode in a.modes.split(','):
            sampler = PatchSampler(images, spec, cfg['patch'], cfg['batch'], seed)
            torch.manual_seed(seed)
            model = make_network(network, cfg['size'])
            loss = make_loss(f'official-{a.task}', mode)
            t0 = time.perf_counter()
            info = train(model, loss, sampler, cfg['steps'], cfg['lr'], 0.8, progress=False, desc=f'{mode} seed {seed}')
            run = dict(seed=seed, mode=mode, train_s=time.perf_counter() - t0,
                       final_loss=float(np.mean(info['history'][-max(1, len(info['history'])//10):])), test=evaluate(model, tests, spec))
            res['runs'].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    verdicts = {}
    for mode in [m for m in a.modes.split(',') if m != 'exact']:
        verdict = verdicts.setdefault(mode, {})
        for seed in sorted({r['seed'] for r in res['runs']}):
            by = {r['mode']: r for r in res['runs'] if r['seed'] == seed}
            if 'exact' not in by or mode not in by: continue
            for ts, m in by[mode]['test'].items():
                e = by['exact']['test'][ts]
                d = dict(psnr_diff=m['psnr'] - e['psnr'], ssim_diff=m['ssim'] - e['ssim'])
                d['within_bar'] = d['psnr_diff'] >= -PSNR_BAR and d['ssim_diff'] >= -SSIM_BAR
                verdict[f'seed {seed} {ts}'] = d
    exact = [r for r in res['runs'] if r['mode'] == 'exact']
    if len(exact) > 1:
        res['exact_seed_spread'] = {ts: dict(psnr=float(np.ptp([r['test'][ts]['psnr'] for r in exact])),
                                             ssim=float(np.ptp([r['test'][ts]['ssim'] for r in exact]))) for ts in exact[0]['test']}
    res['vs_exact'] = verdicts
    res['passes'] = {mode: bool(v) and all(d['within_bar'] for d in v.values()) for mode, v in verdicts.items()}
    res['bar'] = f'at most {PSNR_BAR} dB PSNR and {SSIM_BAR} SSIM below exact on every test set'
    res['machine'] = machine()
    report(res, a.out)


if __name__ == '__main__':
    main()
