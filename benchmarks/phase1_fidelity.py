"""Ours against theirs, size for size: pixel optimisation from the authors' own start, and the per-scale profile of each MDF loss.

(a) The authors' pixel-optimisation experiment (their target `i10.png`, their starting noise `noisy_start.npy`, Adam
    lr 0.1 on the pixels, the loss alone) at a size the CPU affords: the same centre crop (or the same resize) of
    target and start. It runs for each MDF loss, ours and theirs, and for L1, L2, SSIM and MS-SSIM as anchors, beside
    the published full-size curves (`PSNRs_<loss>.npy`: the PSNR before each of 500 updates).
(b) The per-scale profile: on centre crops of CBSD68 and CSet14, each task's distortion at its default strength, the
    share of the loss that each discriminator carries (`MDFLoss.terms` summed over its taps, normalised per image);
    and the loss / MSE at a matched PSNR per distortion (`task_specificity`).
(c) A markdown report that says where ours behaves like theirs and where it does not, with the numbers of the run.

    python benchmarks/phase1_fidelity.py --threads 1 --out benchmarks/results/phase1_fidelity

prints JSON and writes OUT.json, OUT.md and OUT.png. A loss is a shipped name (`MDFLoss.available()`) or
`label=path/to/loss.safetensors`. Curves are cached per loss file (by sha256), size and settings under `--cache`, so
an interrupted run continues where it stopped and a new loss file is run afresh.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mdf_loss import MDFLoss
from mdf_loss.baselines import get_loss
from mdf_loss.core import load_image, resize
from mdf_loss.runtime import data_dir
from mdf_loss.demo import reference_curves
from mdf_loss.loss import pixel_optimisation, relative_scales
from mdf_loss.sensitivity import benchmark_crops, task_specificity
from mdf_loss.tasks import get_task, task_names
from mdf_loss.weights import pretrained_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, display_path, load_average, machine, now, sha256, versions, write_pair  # noqa: E402

DEFAULT_LOSSES = 'denoise,jpeg,sisr,official-sisr,official-jpeg'
PUBLISHED = ('MDF', 'L1', 'L2', 'SSIM', 'MSSSIM', 'VGG')  # the published curves of the paper's figure
ANCHORS = {'L1': 'l1', 'L2': 'l2', 'SSIM': 'ssim', 'MSSSIM': 'msssim'}  # classic losses rerun at our size
THRESHOLDS = (15, 20, 25, 30, 40)
# one colour per loss in both panels; the published 'MDF' curve is the authors' SISR file, so it shares its colour
COLOURS = {'official-sisr': '#c44e52', 'MDF': '#c44e52', 'official-jpeg': '#8c564b', 'L1': '#4c72b0', 'L2': '#55a868',
           'SSIM': '#8172b2', 'MSSSIM': '#937860', 'VGG': '#da8bc3'}
OURS_COLOURS = ['#dd8452', '#e6ab02', '#17becf', '#2ca02c', '#7f7f7f']


def parse_losses(spec: str) -> list[dict]:
    "Each comma-separated entry: a shipped name, or label=path."
    out = []
    for item in (s.strip() for s in spec.split(',') if s.strip()):
        label, _, path = item.partition('=')
        if not path:
            path = str(pretrained_path(label)) if not (label.endswith('.safetensors') or os.path.sep in label) else label
            if path == label: label = Path(path).stem
        if not Path(path).is_file(): sys.exit(f'loss {label!r}: no such file {path}')
        out.append({'label': label, 'path': str(path)})
    if len({e['label'] for e in out}) != len(out): sys.exit(f'two losses share a label: {[e["label"] for e in out]}')
    return out


def describe(entry: dict, loss: MDFLoss) -> dict:
    "Where a loss comes from and what it is: file, sha256, owner, task, discriminators, training command and time."
    meta = dict(loss.meta or {})
    prov = dict(meta.get('provenance') or {})
    authors = prov.get('made_by') == 'mdf_loss.weights.import_official'
    cfg = prov.get('config') or {}
    return {'label': entry['label'], 'path': display_path(entry['path']), 'sha256': sha256(entry['path']),
            'owner': 'authors' if authors else 'ours', 'task': meta.get('task'), 'distortion': meta.get('distortion'),
            'discriminators': len(loss.discriminators), 'used': loss.num_scales, 'widths': meta.get('widths'),
            'scale_sizes': meta.get('scale_sizes'),
            'relative_scales': [round(a, 4) for a, _ in relative_scales(meta, len(loss.discriminators))][:loss.num_scales],
            'command': prov.get('command'), 'source_file': prov.get('source_file'),
            'iters_per_scale': cfg.get('iters'), 'train_max_size': cfg.get('max_size'),
            'train_seconds': prov.get('seconds') or prov.get('train_seconds')}


# ---------------------------------------------------------------- (a) pixel optimisation

def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition('x')
    try: return int(h), int(w)
    except ValueError: sys.exit(f'--size must be HxW such as 96x128, got {text!r}')


def pixel_inputs(root: Path, size: tuple[int, int], region: str) -> tuple[torch.Tensor, torch.Tensor]:
    "The authors' target and start, both cropped at the centre (or both resized) to `size`."
    ref = root / 'mdf_reference'
    start = torch.from_numpy(np.load(ref / 'noisy_start.npy')).float()
    target = load_image(ref / 'i10.png')
    if start.shape != target.shape: sys.exit(f'start {tuple(start.shape)} and target {tuple(target.shape)} differ')
    h, w = size
    H, W = target.shape[-2:]
    if h > H or w > W: sys.exit(f'--size {h}x{w} is larger than the reference images ({H}x{W})')
    if region == 'resize': return resize(target, (h, w)).clamp(0, 1), resize(start, (h, w)).clamp(0, 1)
    top, left = (H - h) // 2, (W - w) // 2
    return target[..., top:top + h, left:left + w].contiguous(), start[..., top:top + h, left:left + w].contiguous()


def first(c: np.ndarray, cond) -> int | None:
    idx = np.flatnonzero(cond(c))
    return int(idx[0]) if len(idx) else None


def summarise(curve, horizon: int) -> dict:
    "Convergence of a PSNR curve (value i = before update i) up to update `horizon` (the published curves stop at 499)."
    c = np.asarray(curve, dtype=np.float64)[:horizon + 1]
    start, end = float(c[0]), float(c[-1])
    gain = end - start
    settle = next((i for i in range(len(c)) if np.all(np.abs(c[i:] - end) <= 1.0)), None)
    return {'horizon': len(c) - 1, 'start': start, 'end': end, 'best': float(c.max()), 'best_step': int(c.argmax()),
            'step_90pct_gain': first(c, lambda v: v >= start + 0.9 * gain) if gain > 0 else None,
            'settle_1dB': settle,  # first step from which the curve stays within 1 dB of its value at the horizon
            'first_step_at': {str(t): first(c, lambda v: v >= t) for t in THRESHOLDS},
            'at': {str(s): float(c[s]) for s in (1, 3, 24, 99, 199, 299, 499) if s < len(c)}}


def cached_curve(cache: Path | None, key: dict, run):
    "Run `run()` unless `cache` holds a curve for exactly `key`."
    if cache is None: return run()
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    f = cache / f'curve_{name}.json'
    if f.is_file():
        rec = json.loads(f.read_text())
        if rec.get('key') == key: return rec['curve'], rec['seconds'], True
    curve, seconds, _ = run()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix('.tmp')
    tmp.write_text(json.dumps({'key': key, 'curve': curve, 'seconds': seconds}))
    tmp.replace(f)
    return curve, seconds, False


def pixel_part(losses: dict, info: dict, a, root: Path, cache: Path | None) -> dict:
    size = parse_size(a.size)
    target, start = pixel_inputs(root, size, a.region)
    runs = {**{lab: ('mdf', fn, info[lab]['sha256']) for lab, fn in losses.items()},
            **{lab: ('anchor', get_loss(name), name) for lab, name in ANCHORS.items() if lab in a.anchors}}
    curves = {}
    for label, (kind, fn, ident) in runs.items():
        key = {'loss': ident, 'size': list(size), 'region': a.region, 'steps': a.steps, 'lr': a.lr}
        def go(fn=fn):
            t0 = time.perf_counter()
            c = pixel_optimisation(fn, start, target, steps=a.steps, lr=a.lr)
            return c, time.perf_counter() - t0, False
        curve, seconds, hit = cached_curve(cache, key, go)
        print(f'pixel optimisation {label}: {curve[-1]:.2f} dB after {a.steps} steps, {seconds:.0f} s'
              f'{" (cached)" if hit else ""}', file=sys.stderr)
        curves[label] = {'kind': kind, 'curve': [round(v, 4) for v in curve], 'seconds': round(seconds, 1), 'cached': hit}
    horizon = min(a.steps, 499)
    for rec in curves.values(): rec['summary'] = summarise(rec['curve'], horizon)
    published = {k: v for k, v in reference_curves(root / 'mdf_reference' / 'psnr_curves').items() if k in PUBLISHED}
    pub = {k: {'curve': [round(float(x), 4) for x in v], 'summary': summarise(v, horizon)} for k, v in published.items()}
    return {'size': list(size), 'region': a.region, 'steps': a.steps, 'lr': a.lr, 'horizon': horizon,
            'start_psnr': curves[next(iter(curves))]['curve'][0] if curves else None,
            'published_size': list(load_image(root / 'mdf_reference' / 'i10.png').shape[-2:]),
            'curves': curves, 'published': pub}


def figure(pixel: dict, info: dict, path: Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), dpi=110, sharey=True, layout='constrained')
    ours = [lab for lab in pixel['curves'] if info.get(lab, {}).get('owner') == 'ours']
    colour = {**COLOURS, **{lab: OURS_COLOURS[i % len(OURS_COLOURS)] for i, lab in enumerate(ours)}}
    steps = pixel['steps']
    ph, pw = pixel['published_size']
    h, w = pixel['size']
    for label, rec in pixel['published'].items():
        name = "MDF (authors' SISR = denoising file)" if label == 'MDF' else label
        axes[0].plot(rec['curve'], color=colour.get(label, '#333333'), lw=1.6, label=name)
    for label, rec in pixel['curves'].items():
        who = info.get(label, {})
        name = (f"{label} (authors')" if who.get('owner') == 'authors' else f'{label} (ours)') if rec['kind'] == 'mdf' else label
        if label == 'official-sisr': name = "official-sisr (authors' SISR = denoising file)"
        axes[1].plot(rec['curve'], color=colour.get(label, '#333333'), lw=2.0 if rec['kind'] == 'mdf' else 1.2,
                     ls='--' if who.get('owner') == 'ours' else '-', label=name)
    axes[0].set_title(f"Published (the authors' run): i10.png at {ph} x {pw}", fontsize=10)
    how = 'centre crop' if pixel['region'] == 'crop' else 'resize'
    axes[1].set_title(f"This run: the same target and start, {how} to {h} x {w}", fontsize=10)
    top = 65
    for ax in axes:
        ax.set(xlabel='Adam step on the pixels (lr 0.1)', xlim=(0, max(steps, 499)), ylim=(5, top))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc='lower right')
    axes[0].set_ylabel('PSNR of the clamped pixels (dB)')
    fig.suptitle(f'Optimising pixels from the same noise under each loss (curves above {top} dB are cut: L2 reaches ~150 dB)',
                 fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- (b) per-scale profile

def distorted(crops: dict, task: str, seed: int) -> dict:
    spec = get_task(task)
    return {n: spec.distort(x, None, seed + i) for i, (n, x) in enumerate(crops.items())}


def profile_part(losses: dict, info: dict, crops: dict, a) -> dict:
    tasks = task_names('sensitivity')
    dist = {t: distorted(crops, t, a.seed) for t in tasks}
    out = {'tasks': {t: {'title': get_task(t).title, 'strength': get_task(t).strength.label(get_task(t).strength.default)}
                     for t in tasks}, 'losses': {}}
    for label, fn in losses.items():
        per_task = {}
        for t in tasks:
            shares, taps, values = [], [], []
            for n, x in crops.items():
                terms = fn.terms(dist[t][n], x)[0].double()  # num_scales x 3
                per_scale = terms.sum(1)
                total = float(per_scale.sum())
                shares.append((per_scale / total).tolist())
                taps.append((terms.sum(0) / total).tolist())
                values.append(total)
            s = np.asarray(shares)
            k = s.shape[1]
            mean = s.mean(0)
            per_task[t] = {'share_mean': mean.round(4).tolist(), 'share_std': s.std(0).round(4).tolist(),
                           'share_sum_per_image': [round(float(v), 6) for v in s.sum(1)],
                           'peak_scale': int(mean.argmax()),
                           'centre': round(float((mean * np.arange(k)).sum() / max(k - 1, 1)), 4),
                           'coarse_half': round(float(mean[:math.ceil(k / 2)].sum()), 4),
                           'tap_share_mean': np.asarray(taps).mean(0).round(4).tolist(),
                           'loss_mean': float(np.mean(values)),
                           'per_image': {n: [round(v, 5) for v in sh] for n, sh in zip(crops, shares)}}
        out['losses'][label] = per_task
    spec = task_specificity({**losses, 'mse': lambda x, y: F.mse_loss(x, y)}, crops, target=a.psnr, seed=a.seed)
    matched = spec.pop('_psnr')
    spec.pop('mse', None)
    norm = {lab: {t: r[t] / np.mean(list(r.values())) for t in r} for lab, r in spec.items()}
    out['specificity'] = {'target_psnr': a.psnr, 'matched_psnr': matched, 'loss_over_mse': spec, 'over_row_mean': norm}
    return out


# ---------------------------------------------------------------- (c) report

def fmt(v, d=2):
    return 'n/a' if v is None else f'{v:.{d}f}'


def step(v):
    return 'never' if v is None else str(v)


def compare_sentences(pixel: dict, prof: dict, info: dict) -> list[str]:
    "Plain sentences, every number from this run: where ours behaves like theirs and where not."
    lines = []
    cur, pub = pixel['curves'], pixel['published']
    H = pixel['horizon']
    theirs = [l for l in cur if info.get(l, {}).get('owner') == 'authors']
    ours = [l for l in cur if info.get(l, {}).get('owner') == 'ours']
    if 'MDF' in pub and 'official-sisr' in cur:
        p, o = pub['MDF']['summary'], cur['official-sisr']['summary']
        lines.append(f"- **Size.** The authors' SISR loss (= their denoising file) reaches {fmt(p['end'])} dB at step {H} in their "
                     f"published run ({pixel['published_size'][0]} x {pixel['published_size'][1]}) and {fmt(o['end'])} dB here "
                     f"({pixel['size'][0]} x {pixel['size'][1]}); 90% of the gain by step {step(p['step_90pct_gain'])} there and "
                     f"{step(o['step_90pct_gain'])} here. This difference is the effect of size alone, the yardstick for the rest.")
    for anchor in ('L1', 'L2', 'SSIM'):
        if anchor in pub and anchor in cur:
            lines.append(f"- {anchor}: {fmt(pub[anchor]['summary']['end'])} dB published, {fmt(cur[anchor]['summary']['end'])} dB here.")
    if theirs:
        band = [cur[l]['summary']['end'] for l in theirs]
        lo, hi = min(band), max(band)
        s90 = [cur[l]['summary']['step_90pct_gain'] for l in theirs if cur[l]['summary']['step_90pct_gain'] is not None]
        ends = ', '.join(f"{l} {fmt(cur[l]['summary']['end'])} dB" for l in theirs)
        steps90 = ', '.join(f"{l} {step(cur[l]['summary']['step_90pct_gain'])}" for l in theirs)
        lines.append(f"- **The authors' two files at this size** end at {ends}; 90% of the gain by step {steps90}.")
        for l in ours:
            s = cur[l]['summary']
            inside = lo - 1.0 <= s['end'] <= hi + 1.0
            rel = 'inside' if inside else ('below' if s['end'] < lo - 1.0 else 'above')
            near = (s90 and s['step_90pct_gain'] is not None and min(s90) * 0.75 <= s['step_90pct_gain'] <= max(s90) * 1.25)
            lines.append(f"- **Ours, {l}** ({info[l]['task']}; {info[l]['used']} discriminators): {fmt(s['end'])} dB at step {H}, "
                         f"{rel} the authors' band {fmt(lo)}-{fmt(hi)} dB (widened by 1 dB); 90% of its gain by step "
                         f"{step(s['step_90pct_gain'])} ({'like' if near else 'unlike'} theirs, within 25%); "
                         f"{fmt(s['at'].get('24'))} dB at step 24 and {fmt(s['at'].get('99'))} dB at step 99 against "
                         f"{', '.join(fmt(cur[t]['summary']['at'].get('99')) for t in theirs)} dB for theirs at step 99.")
    # profile shapes
    tasks = list(prof['tasks'])
    for t in tasks:
        parts = []
        for l, d in prof['losses'].items():
            r = d[t]
            parts.append(f"{l} peak D{r['peak_scale']} of {len(r['share_mean'])}, coarsest half {100 * r['coarse_half']:.0f}%, "
                         f"centre {r['centre']:.2f}")
        lines.append(f"- **Profile, {prof['tasks'][t]['title']} ({prof['tasks'][t]['strength']}):** " + '; '.join(parts) + '.')
    sp = prof['specificity']['over_row_mean']
    for l in ours:
        own = info[l]['task']
        if own not in tasks: continue
        col = {k: v[own] for k, v in sp.items()}
        rank = sorted(col, key=col.get, reverse=True).index(l) + 1
        top = max(sp[l], key=sp[l].get)
        lines.append(f"- **Specificity, {l}:** relative to MSE its strongest response is to {top}; for its own distortion ({own}) "
                     f"its normalised response {col[l]:.2f} ranks {rank} of {len(col)} losses "
                     f"(authors': {', '.join(f'{t} {col[t]:.2f}' for t in theirs if t in col)}).")
    return lines


def markdown(res: dict) -> str:
    pixel, prof, info = res.get('pixel'), res.get('profile'), res['losses']
    L = ['# Ours against theirs, size for size', '', f"- command: `{res['command']}`",
         f"- date: {res['date']}; machine: {res['machine']['cpu_model']}, {res['machine']['cpu_count']} cores, "
         f"torch {res['versions']['torch']} ({res['machine']['torch_threads']} thread(s)), mdf_loss {res['versions']['mdf_loss']}",
         f"- load average at start {res['load_average']['start']}, at end {res['load_average']['end']}; {res['seconds']:.0f} s in all", '',
         '## The losses', '',
         '| label | owner | task | discriminators used / in file | widths | training scale of the used ones (finest trained = 1) | trained | sha256 (first 12) | file |',
         '|---|---|---|---|---|---|---|---|---|']
    for l, d in info.items():
        trained = ("by the authors; not published (BatchNorm's counters imply about 1000 iterations per scale for SISR, 3000 for JPEG)" if d['owner'] == 'authors' else
                   f"{d['iters_per_scale']} iterations per scale, largest side {d['train_max_size']} px"
                   + (f", {d['train_seconds'] / 3600:.1f} h" if d.get('train_seconds') else ''))
        rel = ', '.join(f'{v:.2f}' for v in d['relative_scales'])
        if d['owner'] == 'authors' and not d.get('scale_sizes'): rel += ' (from the 0.75 factor; sizes not recorded)'
        widths = ','.join(map(str, (d['widths'] or [])[:d['used']]))
        L.append(f"| {l} | {d['owner']} | {d['task']} | {d['used']} / {d['discriminators']} | {widths} | {rel} | {trained} | "
                 f"`{d['sha256'][:12]}` | `{d['path']}` |")
    L += ['', "The authors' SISR file is byte-identical to their denoising file, so `official-sisr` is their denoising loss too.", '']
    if pixel:
        H = pixel['horizon']
        how = ('the centre crop of both, the same pixels as the authors\' own' if pixel['region'] == 'crop'
               else 'both resized (bicubic, antialiased), which smooths the noise')
        L += ['## (a) Pixel optimisation from the authors\' start', '',
              f"Target `i10.png` and start `noisy_start.npy`, {how}: {pixel['size'][0]} x {pixel['size'][1]} "
              f"(published: {pixel['published_size'][0]} x {pixel['published_size'][1]}). Adam lr {pixel['lr']}, {pixel['steps']} updates, "
              f"the PSNR of the clamped pixels before each update (and after the last). Start: {fmt(pixel['start_psnr'])} dB. "
              f"Comparisons stop at step {H}, where the published curves stop.", '',
              f"![published and our curves]({res.get('figure', 'phase1_fidelity.png')})", '',
              '| run | loss | size | step 1 | step 24 | step 99 | step ' + str(H) + ' | best (step) | 90% of gain at step | settles within 1 dB at step | first step at 20 / 30 / 40 dB | seconds |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|']
        def row(run, name, size, s, seconds):
            fs = s['first_step_at']
            return (f"| {run} | {name} | {size} | {fmt(s['at'].get('1'))} | {fmt(s['at'].get('24'))} | {fmt(s['at'].get('99'))} | "
                    f"{fmt(s['end'])} | {fmt(s['best'])} ({s['best_step']}) | {step(s['step_90pct_gain'])} | {step(s['settle_1dB'])} | "
                    f"{step(fs['20'])} / {step(fs['30'])} / {step(fs['40'])} | {seconds} |")
        psz = f"{pixel['published_size'][0]}x{pixel['published_size'][1]}"
        osz = f"{pixel['size'][0]}x{pixel['size'][1]}"
        for k, r in pixel['published'].items():
            L.append(row('published', "MDF (authors' SISR)" if k == 'MDF' else k, psz, r['summary'], ''))
        for k, r in pixel['curves'].items():
            who = info.get(k, {}).get('owner', 'anchor')
            L.append(row('this run', f'{k} ({who})' if r['kind'] == 'mdf' else k, osz, r['summary'], r['seconds']))
        L.append('')
    if prof:
        tasks = list(prof['tasks'])
        L += ['## (b) Per-scale profile', '',
              f"{res['profile_images']} centre crops of {res['profile_crop']} px (CBSD68 and CSet14). For each task's distortion at its "
              "default strength, the share of the loss that each discriminator carries (its three taps summed, divided by the "
              "image's loss, then averaged over images). D0 is the coarsest-trained discriminator; every one sees the full image.", '']
        for t in tasks:
            kmax = max(len(d[t]['share_mean']) for d in prof['losses'].values())
            L += [f"### {prof['tasks'][t]['title']} ({prof['tasks'][t]['strength']})", '',
                  '| loss | ' + ' | '.join(f'D{k}' for k in range(kmax)) + ' | peak | coarsest half | centre (0 coarsest, 1 finest used) | head / body / tail |',
                  '|---|' + '---|' * (kmax + 4)]
            for l, d in prof['losses'].items():
                r = d[t]
                cells = [f"{100 * v:.1f}% ± {100 * s:.1f}" for v, s in zip(r['share_mean'], r['share_std'])]
                cells += [''] * (kmax - len(cells))
                tap = ' / '.join(f'{100 * v:.0f}%' for v in r['tap_share_mean'])
                L.append(f"| {l} | " + ' | '.join(cells) + f" | D{r['peak_scale']} | {100 * r['coarse_half']:.0f}% | {r['centre']:.2f} | {tap} |")
            L.append('')
        sp = prof['specificity']
        L += [f"### Loss / MSE at a matched PSNR of about {sp['target_psnr']:g} dB", '',
              'Matched PSNR per distortion: ' + ', '.join(f'{t} {v:.2f} dB' for t, v in sp['matched_psnr'].items()) +
              '. Only the columns of one row compare with each other; the right half divides each row by its mean.', '',
              '| loss | ' + ' | '.join(tasks) + ' | ' + ' | '.join(f'{t} / mean' for t in tasks) + ' |', '|---|' + '---|' * 2 * len(tasks)]
        for l, r in sp['loss_over_mse'].items():
            L.append(f"| {l} | " + ' | '.join(f'{r[t]:.3g}' for t in tasks) + ' | ' + ' | '.join(f"{sp['over_row_mean'][l][t]:.2f}" for t in tasks) + ' |')
        L.append('')
    if pixel and prof:
        L += ['## (c) Where ours behaves like theirs, and where not', '',
              'Generated from the numbers above. Rules: a final PSNR is "inside" the authors\' band when it lies between their '
              'two files\' values widened by 1 dB; a convergence step is "like theirs" within 25% of theirs.', '']
        L += compare_sentences(pixel, prof, info)
        L.append('')
    return '\n'.join(L) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--losses', default=DEFAULT_LOSSES,
                   help=f'comma-separated shipped names or label=path.safetensors (default {DEFAULT_LOSSES})')
    p.add_argument('--data', default=None, help='shared data folder (default: $MDF_LOSS_DATA or ../shared/data)')
    p.add_argument('--size', default='96x128', help="HxW of the pixel experiment (default 96x128; the authors' is 384x512)")
    p.add_argument('--region', choices=('crop', 'resize'), default='crop',
                   help="crop: the centre crop of target and start (their own pixels; default); resize: both resized")
    p.add_argument('--steps', type=int, default=500, help='Adam updates of the pixels (default 500, as the authors)')
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--anchors', default='L1,L2,SSIM,MSSSIM', help='classic losses rerun at our size (subset of L1,L2,SSIM,MSSSIM; "" for none)')
    p.add_argument('--per-set', type=int, default=10, help='profile: images per test set (CBSD68, CSet14)')
    p.add_argument('--crop', type=int, default=128, help='profile: side of the centre crops')
    p.add_argument('--psnr', type=float, default=27.0, help='profile: the matched PSNR of the loss/MSE ratios')
    p.add_argument('--seed', type=int, default=0, help='seed of the random distortions (noise)')
    p.add_argument('--parts', default='pixel,profile', help='which parts to run: pixel, profile')
    p.add_argument('--cache', default='runs/phase1_fidelity', help='folder of cached curves ("" for none)')
    p.add_argument('--out', default=None, help='write OUT.json, OUT.md and OUT.png')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (1 on a busy machine)')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    a.anchors = [s.strip() for s in a.anchors.split(',') if s.strip()]
    bad = [s for s in a.anchors if s not in ANCHORS]
    if bad: p.error(f'unknown anchors {bad}; choose among {list(ANCHORS)}')
    parts = {s.strip() for s in a.parts.split(',') if s.strip()}
    if not parts or parts - {'pixel', 'profile'}: p.error(f'--parts takes pixel and/or profile, got {a.parts!r}')
    if a.steps < 1: p.error('--steps must be at least 1')
    root = Path(a.data) if a.data else data_dir(required=True)
    entries = parse_losses(a.losses)
    load0, t0 = load_average(), time.time()
    losses = {e['label']: MDFLoss.load(e['path']) for e in entries}
    info = {e['label']: describe(e, losses[e['label']]) for e in entries}
    cache = Path(a.cache) if a.cache else None
    res = {'command': command_line(argv), 'date': now(), 'machine': machine(),
           'versions': versions(),
           'losses': info}
    if 'pixel' in parts: res['pixel'] = pixel_part(losses, info, a, root, cache)
    if 'profile' in parts:
        crops = benchmark_crops(root / 'benchmarks', per_set=a.per_set, size=a.crop)
        res['profile_images'], res['profile_crop'] = len(crops), a.crop
        res['profile_image_names'] = list(crops)
        res['profile'] = profile_part(losses, info, crops, a)
    res['seconds'] = round(time.time() - t0, 1)
    res['load_average'] = {'start': load0, 'end': load_average()}
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        out = Path(a.out)
        if 'pixel' in res:
            out.parent.mkdir(parents=True, exist_ok=True)
            figure(res['pixel'], info, out.with_suffix('.png'))
            res['figure'] = out.with_suffix('.png').name
        write_pair(out, text, markdown(res))


if __name__ == '__main__':
    main()
