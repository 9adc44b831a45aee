"""Do the cheaper MDF variants train restoration networks as well as the exact mode?

The restoration experiments' `quick` preset, for one task, in one of two protocols: `scratch` (the mode alone from the
initial weights) or `finetune` (L1 for half the steps, shared by every mode of a seed and kept in `--work`; then the
mode for the other half at a tenth of the lr, with no drop, as `mdf-loss experiment --protocol finetune` does). The
same network, initial weights, patches and steps for every mode of a seed; then PSNR/SSIM on the test sets (the
preset's first `max_test_images` of each). The fast mode passes when its mean PSNR is within 0.1 dB and its mean SSIM
within 0.005 of the exact mode's on every test set. The spread between seeds of the exact mode is reported beside it,
so that a difference can be read against the noise of training itself. With `--curve-every N` the exact runs also
score the test sets every N steps (that time left out of theirs), and `vs_exact_equal_time` compares each mode with
the exact run at the mode's training time.

Modes: `exact` (the default MDFLoss), `pyramid` (mode='pyramid'), `bf16` (dtype=torch.bfloat16), `scalesN`
(num_scales=N: fewer taps, the N coarsest-trained discriminators, which are also the narrowest) and `sampleF`
(sample=F: a random subset of the discriminators costing the fraction F of the exact loss on average, unbiased; its
generator is seeded with the run's seed; one systematic draw for the whole batch, as in 0.2). The sampler's options
follow it: `image` (a draw per image of the batch), `narrow` (the narrow discriminators always evaluated), `poisson`
(independent draws), `strat` (draws stratified across steps). Options combine with '+', e.g.
`bf16+sample0.25+image+narrow`.

Usage: python benchmarks/fast_mode_quality.py [--protocol scratch|finetune] [--modes exact,pyramid,bf16,scales4,sample0.25]
           [--task denoise] [--seeds 0] [--steps N] [--curve-every N] [--out benchmarks/results/fast_mode_quality.json]
       (the --out file is rewritten after every run; started again, the benchmark resumes from it; --fresh replaces it)
       python benchmarks/fast_mode_quality.py --merge a.json,b.json --out c.json   (one table and verdict from runs made separately)
       python benchmarks/fast_mode_quality.py --from-log stderr.log --modes ... --seeds ... --out c.json   (a stopped run's finished runs)
       python benchmarks/fast_mode_quality.py --report-only a.json [--out a.json]   (add the paired summary to a recorded result; no training)
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
from mdf_loss.loss import ScaleSampler
from mdf_loss.runtime import data_dir
from mdf_loss.tasks import get_task
from mdf_loss.restoration.experiment import EXPERIMENT_PRESETS
from mdf_loss.restoration.data import PatchSampler, list_images, load_test_set, load_training_images
from mdf_loss.restoration.networks import make_network
from mdf_loss.restoration.trainer import image_metrics, restore, train_network
from mdf_loss.baselines import get_loss

sys.path.insert(0, str(Path(__file__).parent))
from loss_speed import machine, report  # noqa: E402
import stats  # noqa: E402  (benchmarks/stats.py: the paired verdicts of every report)

TEST_SETS = ('CBSD68', 'CSet14')
SAMPLER_0_2 = dict(design='systematic', per_image=False, always=())  # what sample=F meant in 0.2
SAMPLER_OPTIONS = {'image': dict(per_image=True), 'narrow': dict(always='narrow'), 'poisson': dict(design='poisson'),
                   'strat': dict(design='stratified')}
PSNR_BAR, SSIM_BAR = 0.1, 0.005
PROTOCOL_TEXT = {'scratch': 'scratch',
                 'finetune': "finetune (L1 for half the steps, shared by the modes of a seed; then the mode for the rest at a "
                             "tenth of the lr, no drop)"}


def evaluate(model, tests: dict, spec) -> dict:
    "Mean PSNR and SSIM per test set (every variant of the task)."
    shave = spec.scale if spec.scale > 1 else 0
    out = {}
    for name, images in tests.items():
        for v in spec.variant_labels:
            ms = [image_metrics(restore(model, im.inputs[v]), im.clean, shave) for im in images]
            out[name if len(spec.variants) == 1 else f'{name}/{v}'] = {
                'psnr': float(np.mean([m['psnr'] for m in ms])), 'ssim': float(np.mean([m['ssim'] for m in ms])), 'n': len(ms)}
    return out


def loss_options(mode: str, seed: int = 0) -> dict:
    "MDFLoss keyword arguments of one mode (see the module docstring)."
    kw, design = {}, {}
    for part in mode.split('+'):
        if part == 'exact': continue
        elif part == 'pyramid': kw['mode'] = 'pyramid'
        elif part == 'bf16': kw['dtype'] = torch.bfloat16
        elif part.startswith('scales') and part[6:].isdigit(): kw['num_scales'] = int(part[6:])
        elif part.startswith('sample'):
            try: kw['sample'] = float(part[6:])
            except ValueError: raise SystemExit(f"bad sampling fraction in {part!r}: use e.g. sample0.25")
        elif part in SAMPLER_OPTIONS: design.update(SAMPLER_OPTIONS[part])
        else: raise SystemExit(f"unknown mode {part!r}: use exact, pyramid, bf16, scalesN or sampleF (with "
                               f"{', '.join(SAMPLER_OPTIONS)}), joined by '+'")
    if design and 'sample' not in kw: raise SystemExit(f"{mode!r}: {', '.join(SAMPLER_OPTIONS)} need sampleF too")
    if 'sample' in kw:  # the 0.2 design unless options say otherwise, seeded with the run's seed
        kw['sample'] = ScaleSampler(kw['sample'], torch.Generator().manual_seed(seed), **{**SAMPLER_0_2, **design})
    return kw


def make_loss(name: str, mode: str, seed: int = 0) -> MDFLoss:
    "The MDF loss of one mode."
    return MDFLoss.from_pretrained(name, **loss_options(mode, seed))


def verdicts_of(res: dict) -> None:
    "Each mode's margins against the exact mode of the same seed, the exact mode's spread across seeds, pass/fail."
    verdicts = {}
    for mode in dict.fromkeys(r['mode'] for r in res['runs'] if r['mode'] != 'exact'):
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
    paired_summary(res)


def paired_summary(res: dict) -> dict:
    """Each mode against the exact mode, paired by seed: per test set and measure, stats.paired of the per-seed values,
    whether the interval clears the bar (non-inferiority), and the detectable difference; sentences in `lines`."""
    bars = {'psnr': PSNR_BAR, 'ssim': SSIM_BAR}
    runs = {(r['seed'], r['mode']): r for r in res['runs']}
    exact = {s: r for (s, mode), r in runs.items() if mode == 'exact'}
    modes, verdict_of, lines = {}, {}, []
    for mode in dict.fromkeys(r['mode'] for r in res['runs'] if r['mode'] != 'exact'):
        mine = {s: r for (s, md), r in runs.items() if md == mode and s in exact}
        if not mine: continue
        per = {}
        for ts in next(iter(mine.values()))['test']:
            for m, bar in bars.items():
                p = stats.paired({s: r['test'][ts][m] for s, r in mine.items()}, {s: exact[s]['test'][ts][m] for s in mine})
                lo, hi = p['ci']
                p['non_inferior'] = None if lo is None else lo >= -bar
                p['worse_than_bar'] = None if hi is None else hi < -bar
                per.setdefault(ts, {})[m] = p
        cells = [p for ts in per.values() for p in ts.values()]
        ni = ('failed' if any(p['worse_than_bar'] for p in cells) else
              'shown' if all(p['non_inferior'] for p in cells) else 'not shown')
        modes[mode], verdict_of[mode] = per, ni
        parts = [f"{ts} {m.upper()} {stats.interval_text(p, '{:+.3f}' if m == 'psnr' else '{:+.4f}')} {p['verdict']}"
                 for ts, ms in per.items() for m, p in ms.items()]
        n = min(p['n'] for p in cells)
        det = [f"{ts} {m.upper()} {p['detectable']['half_width']:.3g} / {p['detectable']['mde']:.3g}" for ts, ms in per.items()
               for m, p in ms.items() if p['detectable'].get('half_width') is not None]
        lines.append(f"{mode} minus exact, paired over {n} seed(s): " + '; '.join(parts) +
                     f". Non-inferiority to the bar ({PSNR_BAR} dB, {SSIM_BAR} SSIM): {ni}" +
                     (' (one seed: no interval)' if n < 2 else '') + '. ' +
                     (f"Detectable difference (95% half-width / MDE at 80% power) with {n} seeds: {'; '.join(det)}." if det else ''))
    res['paired'] = {'rule': 'per-seed differences mode minus exact (same seed: same initial weights and patches); mean with a 95% '
                             'Student-t interval over the seeds; win above 0, loss below, tie when it contains 0 or with one seed. '
                             f'Non-inferiority: shown when every lower bound is >= -bar ({PSNR_BAR} dB PSNR, {SSIM_BAR} SSIM), failed '
                             'when some upper bound is < -bar, not shown otherwise. Detectable: t(0.975, n-1) * sd / sqrt(n); MDE '
                             '(t(0.975, n-1) + t(0.80, n-1)) * sd / sqrt(n) (benchmarks/stats.py).',
                     't_quantiles': stats.T_SOURCE, 'modes': modes, 'non_inferiority': verdict_of, 'lines': lines}
    return res['paired']


def report_only(path: str, out: str | None) -> None:
    "Add the paired summary to a recorded result (nothing trained, every recorded field kept); print it, write it to `out`."
    res = json.loads(Path(path).read_text())
    paired_summary(res)
    equal_time(res)
    res['report'] = {'command': ' '.join(['python', *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds')}
    text = json.dumps(res, indent=1)
    print(text)
    if out: Path(out).write_text(text + '\n')


def merge(paths: list[str], out: str | None) -> None:
    "One result from several files of the same protocol (e.g. the exact runs and the sampled runs made in parallel)."
    parts = [json.loads(Path(p).read_text()) for p in paths]
    keys = ('task', 'network', 'loss', 'protocol')
    for p, r in zip(paths[1:], parts[1:]):
        if any(r[k] != parts[0][k] for k in keys): sys.exit(f'{p} is another protocol than {paths[0]}: {[k for k in keys if r[k] != parts[0][k]]}')
        if r.get('device', 'cpu') != parts[0].get('device', 'cpu'):
            sys.exit(f"{p} ran on {r.get('device', 'cpu')} and {paths[0]} on {parts[0].get('device', 'cpu')}: merge runs of one device only")
    res = {'command': ' '.join([Path(sys.executable).name, *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           **{k: parts[0][k] for k in keys}, 'device': parts[0].get('device', 'cpu'), 'merged_from': {p: {k: r.get(k) for k in ('command', 'date', 'load_average_start', 'load_average_end', 'machine')}
                                                            for p, r in zip(paths, parts)},
           'runs': [run for r in parts for run in r['runs']]}
    seen = [(r['seed'], r['mode']) for r in res['runs']]
    if len(set(seen)) != len(seen): sys.exit('a (seed, mode) run appears in two files')
    verdicts_of(res)
    equal_time(res)
    res['load_average_start'] = os.getloadavg()
    report(res, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--task', default='denoise')
    p.add_argument('--seeds', default='0', help='comma-separated seeds')
    p.add_argument('--modes', default='exact,pyramid')
    p.add_argument('--steps', type=int, default=None, help="override the preset's steps")
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (the network and the loss; the patches are drawn on the CPU)")
    p.add_argument('--out', help='the result JSON; rewritten after every run, and read back to resume a stopped benchmark')
    p.add_argument('--fresh', action='store_true', help='start again even if --out holds finished runs')
    p.add_argument('--protocol', choices=('scratch', 'finetune'), default='scratch')
    p.add_argument('--work', default='runs/fast_mode_quality', help="where the finetune protocol's L1 pre-training is kept")
    p.add_argument('--curve-every', type=int, default=0, help='score the exact runs every N steps too (the equal-time comparison)')
    p.add_argument('--merge', help='comma-separated result files to combine (no training)')
    p.add_argument('--from-log', help="rebuild the result of a stopped run from its stderr, whose per-run JSON lines it "
                                      "printed (no training); give the stopped run's --task, --seeds, --modes and --steps")
    p.add_argument('--report-only', metavar='JSON', help='add the paired summary to a recorded result JSON (no training); '
                                                         'with --out, write it there (the same file to update it)')
    a = p.parse_args(argv)
    if a.report_only: return report_only(a.report_only, a.out)
    if a.merge: return merge(a.merge.split(','), a.out)
    if a.threads: torch.set_num_threads(a.threads)
    root = data_dir()
    if root is None: sys.exit('SKIPPED: shared data not found; set MDF_LOSS_DATA')
    cfg = dict(EXPERIMENT_PRESETS['quick'])
    if a.steps: cfg['steps'] = a.steps
    spec = get_task(a.task)
    network = spec.networks[0]
    res = {'command': ' '.join([Path(sys.executable).name, *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           'task': a.task, 'network': f"{network} ({cfg['size']})", 'loss': f'official-{a.task}',
           'protocol': PROTOCOL_TEXT[a.protocol] + ', quick preset: ' + json.dumps({k: cfg[k] for k in ('patch', 'batch', 'steps', 'lr', 'train_scale', 'max_train_images', 'max_test_images')}),
           'device': a.device, 'load_average_start': os.getloadavg(), 'runs': []}
    if a.from_log:
        lines = [json.loads(line) for line in Path(a.from_log).read_text().splitlines() if line.startswith('{"seed"')]
        res['runs'] = [r for r in lines if r['mode'] in a.modes.split(',') and str(r['seed']) in a.seeds.split(',')]
        res['partial'] = (f'rebuilt from the log of a run that was stopped: {len(res["runs"])} of '
                          f'{len(a.seeds.split(","))*len(a.modes.split(","))} runs had finished')
        verdicts_of(res)
        res['machine'] = machine()
        return report(res, a.out)
    train_paths = list_images(root/'benchmarks'/'CSun_Hays80', cfg['max_train_images'])
    images = load_training_images(train_paths, cfg['train_scale'], cfg['patch'])
    tests = {n: load_test_set(root/'benchmarks'/n, spec, 0, cfg['max_test_images']) for n in TEST_SETS}
    done = {}
    if a.out and Path(a.out).exists() and not a.fresh:  # resume: keep the finished runs of the same protocol
        old = json.loads(Path(a.out).read_text())
        if old.get('protocol') != res['protocol'] or old.get('task') != a.task:
            sys.exit(f"{a.out} holds another protocol ({old.get('protocol')}); choose another --out, or pass --fresh to replace it")
        done = {(r['seed'], r['mode']): r for r in old['runs']}
    for seed in [int(s) for s in a.seeds.split(',')]:
        for mode in a.modes.split(','):
            if (seed, mode) in done:
                res['runs'].append(done[(seed, mode)]); continue
            res['runs'].append(one_run(a, cfg, spec, network, images, tests, seed, mode))
            print(json.dumps(res['runs'][-1]), file=sys.stderr, flush=True)
            if a.out:  # each finished run is recorded at once, so that a stopped benchmark resumes where it was
                Path(a.out).write_text(json.dumps({**res, 'partial': 'runs still to come'}, indent=1) + '\n')
    verdicts_of(res)
    equal_time(res)
    res['machine'] = machine()
    report(res, a.out)


class Curve:
    "A loss that, every `every` calls, scores the model on the test sets first (its time left out of the training time)."
    def __init__(self, loss, model, every: int, score):
        self.loss, self.model, self.every, self.score, self.calls, self.points = loss, model, every, score, 0, []
        self.t0, self.paused = time.perf_counter(), 0.0

    def __call__(self, output, target):
        if self.calls and self.calls % self.every == 0: self.record()
        self.calls += 1
        return self.loss(output, target)

    def record(self):
        t = time.perf_counter()
        self.model.eval()
        with torch.no_grad(): test = self.score()
        self.model.train()
        self.points.append(dict(step=self.calls, train_s=t - self.t0 - self.paused, test=test))
        self.paused += time.perf_counter() - t


def one_run(a, cfg, spec, network, images, tests, seed: int, mode: str) -> dict:
    "Train and score one (seed, mode): from scratch, or from the seed's shared L1 pre-training (finetune)."
    sampler = PatchSampler(images, spec, cfg['patch'], cfg['batch'], seed)
    torch.manual_seed(seed)
    model = make_network(network, cfg['size'])
    steps, lr, drop = cfg['steps'], cfg['lr'], 0.8
    if a.protocol == 'finetune':
        pre = Path(a.work)/f"pretrain-l1_{a.task}_{network}_seed{seed}_{cfg['steps']//2}steps.pt"
        if not pre.exists():  # shared by every mode of this seed; written whole or not at all
            train_network(model, get_loss('l1'), sampler, cfg['steps']//2, cfg['lr'], None, progress=False)
            pre.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), pre.with_suffix('.tmp')); pre.with_suffix('.tmp').replace(pre)
        model.load_state_dict(torch.load(pre, weights_only=True))
        steps, lr, drop = cfg['steps'] - cfg['steps']//2, cfg['lr']*0.1, None
    loss = make_loss(f'official-{a.task}', mode, seed).to(a.device)
    curve = Curve(loss, model, a.curve_every, lambda: evaluate(model, tests, spec)) if a.curve_every and mode == 'exact' else None
    t0 = time.perf_counter()
    info = train_network(model, curve or loss, sampler, steps, lr, drop, device=a.device, progress=False, desc=f'{mode} seed {seed}')
    train_s = time.perf_counter() - t0 - (curve.paused if curve else 0.0)
    run = dict(seed=seed, mode=mode, train_s=train_s, step_ms=1000*train_s/steps,
               final_loss=float(np.mean(info['history'][-max(1, len(info['history'])//10):])), test=evaluate(model, tests, spec))
    if curve: run['curve'] = curve.points + [dict(step=steps, train_s=train_s, test=run['test'])]
    return run


def equal_time(res: dict) -> None:
    """Each mode against the exact mode of the same seed at equal training time: the exact run's test scores at the
    mode's training time, interpolated between the points of its curve (when the exact runs recorded one)."""
    out = {}
    for r in res['runs']:
        ex = next((e for e in res['runs'] if e['seed'] == r['seed'] and e['mode'] == 'exact' and 'curve' in e), None)
        if r['mode'] == 'exact' or ex is None: continue
        pts = [dict(step=0, train_s=0.0, test=None)] + ex['curve']
        j = next((i for i, q in enumerate(pts) if q['train_s'] >= r['train_s']), None)
        if j is None or j == 0 or pts[j - 1]['test'] is None:
            out.setdefault(r['mode'], {})[f"seed {r['seed']}"] = {'note': 'outside the recorded curve'}; continue
        lo, hi = pts[j - 1], pts[j]
        f = (r['train_s'] - lo['train_s'])/(hi['train_s'] - lo['train_s'])
        at = {ts: {m: lo['test'][ts][m] + f*(hi['test'][ts][m] - lo['test'][ts][m]) for m in ('psnr', 'ssim')} for ts in r['test']}
        out.setdefault(r['mode'], {})[f"seed {r['seed']}"] = {
            'exact_steps_at_time': lo['step'] + f*(hi['step'] - lo['step']), 'exact_at_time': at,
            **{ts: {f'{m}_diff': r['test'][ts][m] - at[ts][m] for m in ('psnr', 'ssim')} for ts in r['test']}}
    for mode, seeds in out.items():  # paired over the seeds, as the equal-step summary
        ok = {int(k.split()[1]): v for k, v in seeds.items() if 'exact_at_time' in v}
        mine = {(r['seed']): r for r in res['runs'] if r['mode'] == mode and r['seed'] in ok}
        if not ok: continue
        seeds['paired'] = {ts: {m: stats.paired({sd: mine[sd]['test'][ts][m] for sd in ok},
                                                {sd: ok[sd]['exact_at_time'][ts][m] for sd in ok}) for m in ('psnr', 'ssim')}
                           for ts in next(iter(mine.values()))['test']}
    if out:
        res['vs_exact_equal_time'] = out
        res['equal_time_rule'] = ("the exact run's test scores at the mode's training time, interpolated linearly between "
                                  "its curve points (exact steps in that time in exact_steps_at_time)")


if __name__ == '__main__':
    main()
