"""Which random part of the MDF loss to evaluate: variance, cost and bias of scale sampling and window sampling.

`MDFLoss(..., sample=F)` evaluates a random subset of the discriminators (scale sampling) whose expected cost is the
fraction F of the exact loss's, each weighted by 1/(its inclusion probability). This script measures it against the
alternatives that were tried and not shipped, on the same images and at the same expected cost (multiply-adds):

- scales: the 0.2 estimator (one systematic draw for the whole batch, probabilities from cost and running gradient
  share; `benchmarks/sampled_gradient_variance.py` compares it with the per-image draws that replaced it);
- scales-poisson: the same probabilities with independent draws;
- scales-equal: systematic draws with probabilities from cost alone (every gradient share taken equal);
- windows: every discriminator, each on one random window of the image, with unbiased weights. The window's offset
  may overhang the image (it is clipped), so that every output position of every tap is counted with the same
  probability f; a tap position whose receptive field the window only partly holds belongs to its neighbour in the
  tail's grid and is masked out, so each position is counted once. The window's size is the largest whose expected
  cost is at most F (the discriminators are valid convolutions, so the features of a window are exactly the matching
  part of the image's: there is no approximation, only the halo of 10 px that every window pays for);
- windows-naive: windows of the same size kept inside the image and weighted by the area ratio: the border is counted
  less often than the interior, a bias (the 'border effect'). Its expectation is computed exactly by enumerating every
  window, and so is that of `windows`, which must equal the exact loss.

For each configuration and fraction: the loss value's relative spread, the gradient's relative variance
E||g^ - g||^2 / ||g||^2 and mean cosine with the exact gradient, the mean of the draws against the exact value and
gradient in standard errors, and the time of one forward + backward relative to the exact loss's, measured
round-robin in this process.

Usage: python benchmarks/sampling_variance.py [--draws 40] [--threads 1] [--configs 8x48,2x256] [--fractions 0.5,0.25,0.125] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mdf_loss import MDFLoss
from mdf_loss.core import load_image, bundled_image_path, resize
from mdf_loss.runtime import data_dir
from mdf_loss.blocks import SLOPE, folded_layers, tap_chain
from mdf_loss.loss import ScaleSampler, _EagerDistance


def _taps(x, params, keep: bool):
    "The taps of a folded discriminator, and its activations if `keep` (the loss's own chain; call without autograd)."
    return tap_chain(x, folded_layers(params, inplace=True), keep=keep)

sys.path.insert(0, str(Path(__file__).parent))
from loss_speed import machine, report  # noqa: E402

WEIGHTS = 'official-denoise'
METHODS = ('scales', 'scales-poisson', 'scales-equal', 'windows')


# ---------------------------------------------------------------------------------------------------------------------
# Window sampling (benchmark only: measured, not shipped)
# ---------------------------------------------------------------------------------------------------------------------

def _input_gradient(diffs, acts, params, scale):
    "The hand-written backward pass of `mdf_loss.loss.feature_distance`: tap gradients `scale_j * diffs_j` back to the input."
    n = len(params)
    g = diffs[2].mul_(scale[2])
    for j in range(n - 1, 0, -1):
        g = F.conv_transpose2d(g, params[j][0])
        if j - 1 == n - 2 and scale[1]: g.add_(diffs[1], alpha=scale[1])
        if j - 1 == 0 and scale[0]: g.add_(diffs[0], alpha=scale[0])
        g = torch.ops.aten.leaky_relu_backward(g, acts[j - 1], SLOPE, True)
        acts[j - 1] = None
    return F.conv_transpose2d(g, params[0][0])


def masked_distance(x, y, params, tap_weights=(1.0, 1.0, 1.0), need_grad=True, owned=None):
    "`mdf_loss.loss.feature_distance` with the tap positions outside `owned` ((rows, cols) per tap, from the top left) set to 0."
    with torch.no_grad():
        ty, _ = _taps(y, params, False)
        tx, acts = _taps(x, params, need_grad)
        diffs = [a - b for a, b in zip(tx, ty)]
        del tx, ty
        if owned is not None:
            for d, (h, w) in zip(diffs, owned):
                d[..., h:, :] = 0
                d[..., :h, w:] = 0
        acc = torch.promote_types(x.dtype, torch.float32)
        terms = torch.stack([d.to(acc).square().mean((1, 2, 3)) for d in diffs], 1)
        if not need_grad: return terms, None
        scale = [2*float(v)/d[0].numel() for v, d in zip(tap_weights, diffs)]
        return terms, _input_gradient(diffs, acts, params, scale)


def fields(params) -> list[int]:
    "Receptive field after each layer."
    r, out = 1, []
    for w, _ in params:
        r += w.shape[-1] - 1
        out.append(r)
    return out


def window_size(params, h: int, w: int, fraction: float) -> tuple[int, int]:
    "Window (rows, cols) of tail positions with the largest inclusion probability whose expected cost is at most `fraction`."
    r = fields(params)
    rf, py, px = r[-1], h - r[-1] + 1, w - r[-1] + 1
    def dim(p):
        t = torch.arange(1, p + 1, dtype=torch.float64)
        f = t/(p + t - 1)
        f[-1] = 1.0  # the whole extent, no offset
        return f, f*p  # inclusion probability, expected covered length
    fy, ly = dim(py); fx, lx = dim(px)
    cost = sum(wt.shape[0]*wt[0].numel()*torch.outer(ly + rf - rj, lx + rf - rj) for (wt, _), rj in zip(params, r))
    full = sum(wt.shape[0]*wt[0].numel()*(h - rj + 1)*(w - rj + 1) for (wt, _), rj in zip(params, r))
    score = torch.where(cost <= fraction*full, torch.outer(fy, fx), -1.0)
    i = int(score.argmax())
    if score.flatten()[i] < 0: i = int(cost.argmin())  # nothing fits: the smallest window
    return i//px + 1, i % px + 1


class WindowMDF(MDFLoss):
    "MDF estimated from one random window per discriminator: overhanging offsets (unbiased) or `naive` ones inside the image."
    def __init__(self, *args, fraction: float, naive: bool = False, seed: int = 0, **kw):
        super().__init__(*args, **kw)
        self.fraction, self.naive, self.gen = fraction, naive, torch.Generator().manual_seed(seed)
        self._sizes = {}

    def plan(self, k, h, w):
        if (k, h, w) not in self._sizes: self._sizes[(k, h, w)] = window_size(self._params(k, torch.float32), h, w, self.fraction)
        return self._sizes[(k, h, w)]

    def offsets(self, t: int, p: int) -> range:
        "Every offset of a window of `t` tail positions in an extent of `p` (one draw each, equally likely)."
        if t == p: return range(0, 1)
        return range(0, p - t + 1) if self.naive else range(-(t - 1), p)

    def window_terms(self, output, target, k, oy, ox, need_grad):
        "The weighted loss (N) of discriminator k from the window at offsets (oy, ox)."
        dtype = self.dtype or output.dtype
        params = self._params(k, dtype)
        r = fields(params)
        rf, taps_r = r[-1], (r[0], r[-2], r[-1])
        h, w = output.shape[-2:]
        py, px = h - rf + 1, w - rf + 1
        ty, tx = self.plan(k, h, w)
        y0, y1 = max(oy, 0), min(oy + ty, py)
        x0, x1 = max(ox, 0), min(ox + tx, px)
        if self.naive: pi = (ty/py)*(tx/px)
        else: pi = (1.0 if ty == py else ty/(py + ty - 1))*(1.0 if tx == px else tx/(px + tx - 1))
        owned, tw = [], []
        for v, rj in zip(self._layer_floats, taps_r):
            hc, wc = (y1 - y0) + rf - rj, (x1 - x0) + rf - rj
            owned.append((hc if self.naive or y1 == py else y1 - y0, wc if self.naive or x1 == px else x1 - x0))
            tw.append(v*hc*wc/(pi*(py + rf - rj)*(px + rf - rj)))
        xs = output[..., y0:y1 + rf - 1, x0:x1 + rf - 1].to(dtype).contiguous(memory_format=torch.channels_last)
        ys = target[..., y0:y1 + rf - 1, x0:x1 + rf - 1].to(dtype).contiguous(memory_format=torch.channels_last)
        fn = functools.partial(masked_distance, owned=owned)
        if need_grad: return _EagerDistance.apply(xs, ys, fn, params, tuple(tw))[0]
        terms, _ = fn(xs, ys, params, tuple(tw), False)
        return terms @ terms.new_tensor(tw)

    def forward(self, output, target):
        need_grad = torch.is_grad_enabled() and output.requires_grad
        h, w = output.shape[-2:]
        total = 0
        for k in range(self.num_scales):
            if self._scale_floats[k] == 0: continue
            ty, tx = self.plan(k, h, w)
            rf = fields(self._params(k, torch.float32))[-1]
            ry, rx = self.offsets(ty, h - rf + 1), self.offsets(tx, w - rf + 1)
            u = torch.rand(2, dtype=torch.float64, generator=self.gen).tolist()
            oy, ox = ry[int(u[0]*len(ry))], rx[int(u[1]*len(rx))]
            total = total + self._scale_floats[k]*self.window_terms(output, target.detach(), k, oy, ox, need_grad)
        per_image = total
        return per_image.mean() if self.reduction == 'mean' else per_image.sum() if self.reduction == 'sum' else per_image


def window_expectation(crit: WindowMDF, x, y) -> tuple[float, torch.Tensor]:
    "The exact expectation of a window estimator's value and gradient: the mean over every window of every discriminator."
    h, w = x.shape[-2:]
    value, grad = 0.0, torch.zeros_like(x)
    for k in range(crit.num_scales):
        ty, tx = crit.plan(k, h, w)
        rf = fields(crit._params(k, torch.float32))[-1]
        ry, rx = crit.offsets(ty, h - rf + 1), crit.offsets(tx, w - rf + 1)
        for oy in ry:
            for ox in rx:
                xg = x.clone().requires_grad_()
                v = crit._scale_floats[k]*crit.window_terms(xg, y, k, oy, ox, True).mean()
                v.backward()
                value += v.item()/(len(ry)*len(rx))
                grad += xg.grad/(len(ry)*len(rx))
    return value, grad


def naive_inclusion(p: int, t: int, reach: int, n: int) -> torch.Tensor:
    "How often each of `n` tap positions is inside a naive window (offsets 0..p-t, `reach` tap positions from the offset on)."
    if t == p: return torch.ones(n, dtype=torch.float64)
    q = torch.arange(n)
    return torch.stack([(q >= o) & (q < o + reach) for o in range(p - t + 1)]).double().mean(0)


def weighted_distance(x, y, params, tap_weights, maps):
    "Value (N) and input gradient of sum_j v_j mean(maps_j * (f_j(x) - f_j(y))^2): a loss whose taps are weighted position by position."
    with torch.no_grad():
        ty, _ = _taps(y, params, False)
        tx, acts = _taps(x, params, True)
        diffs = [a - b for a, b in zip(tx, ty)]
        value = sum(v*(m*d.square()).mean((1, 2, 3)) for v, m, d in zip(tap_weights, maps, diffs))
        scale = [2*float(v)/d[0].numel() for v, d in zip(tap_weights, diffs)]
        return value, _input_gradient([d*m for d, m in zip(diffs, maps)], acts, params, scale)


def naive_expectation(crit: WindowMDF, x, y) -> tuple[float, torch.Tensor]:
    "The exact expectation of the naive window estimator, in closed form: each tap position weighted by (its inclusion)/(the assumed one)."
    h, w = x.shape[-2:]
    value, grad = 0.0, torch.zeros_like(x)
    for k in range(crit.num_scales):
        params = crit._params(k, x.dtype)
        r = fields(params)
        rf = r[-1]
        py, px = h - rf + 1, w - rf + 1
        ty, tx = crit.plan(k, h, w)
        maps = []
        for rj in (r[0], r[-2], r[-1]):
            ny, nx = h - rj + 1, w - rj + 1
            iy = naive_inclusion(py, ty, ty + rf - rj, ny)
            ix = naive_inclusion(px, tx, tx + rf - rj, nx)
            maps.append((torch.outer(iy, ix)/((ty/py)*(tx/px))).to(x.dtype)[None, None])
        v, g = weighted_distance(x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last),
                                 params, crit._layer_floats, maps)
        value += crit._scale_floats[k]*v.mean().item()
        grad += crit._scale_floats[k]*g/len(x)
    return value, grad


# ---------------------------------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------------------------------

def batch(config: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    "(output, target): training patches (8x48: the quick denoising protocol's) or crops of the bundled photo, and a half-denoised output."
    n, size = (int(v) for v in config.split('x'))
    root = data_dir()
    g = torch.Generator().manual_seed(seed)
    if size <= 64 and root is not None:
        from mdf_loss.tasks import get_task
        from mdf_loss.restoration.data import PatchSampler, list_images, load_training_images
        spec = get_task('denoise')
        images = load_training_images(list_images(root/'benchmarks'/'CSun_Hays80', 40), 0.5, size)
        noisy, clean = PatchSampler(images, spec, size, n, seed).batch(0)
    else:
        photo = resize(load_image(bundled_image_path()), 2*size)
        tops = torch.randint(photo.shape[-2] - size + 1, (n,), generator=g).tolist()
        lefts = torch.randint(photo.shape[-1] - size + 1, (n,), generator=g).tolist()
        clean = torch.cat([photo[..., t:t + size, l:l + size] for t, l in zip(tops, lefts)])
        noisy = clean + 25/255*torch.randn(clean.shape, generator=g)
    return (clean + 0.5*(noisy - clean)).clamp(0, 1), clean  # a stand-in for a half-trained denoiser's output


def call(crit, x, y) -> tuple[float, torch.Tensor]:
    xg = x.clone().requires_grad_()
    v = crit(xg, y)
    v.backward()
    return v.item(), xg.grad


def build(method: str, fraction: float, seed: int) -> MDFLoss:
    if method.startswith('scales'):
        crit = MDFLoss.from_pretrained(WEIGHTS, sample=ScaleSampler(fraction, torch.Generator().manual_seed(seed), per_image=False))
        if method == 'scales-poisson': crit.sampler.design = 'poisson'
        if method == 'scales-equal':
            crit.sampler.importance = torch.ones(crit.num_scales, dtype=torch.float64)
            crit.sampler.update = lambda *a: None
        return crit
    base = MDFLoss.from_pretrained(WEIGHTS)
    return WindowMDF(list(base.discriminators), meta=base.meta, fraction=fraction, naive=method == 'windows-naive', seed=seed)


def measure(config: str, fractions, methods, draws: int, seed: int) -> dict:
    x, y = batch(config, seed)
    exact = MDFLoss.from_pretrained(WEIGHTS)
    v0, g0 = call(exact, x, y)
    h, w = x.shape[-2:]
    out = {'exact_value': v0, 'costs': exact.costs(h, w), 'fractions': {}}
    for fraction in fractions:
        crits = {m: build(m, fraction, seed) for m in methods}
        for m, c in crits.items(): call(c, x, y)  # calibration of the scale samplers (an exact call), warm-up of the rest
        vals = {m: [] for m in methods}; grads = {m: [] for m in methods}
        times = {m: [] for m in ['exact', *methods]}
        for _ in range(draws):  # round-robin: every method once per round
            for m in ['exact', *methods]:
                t0 = time.perf_counter()
                v, g = call(exact if m == 'exact' else crits[m], x, y)
                times[m].append(time.perf_counter() - t0)
                if m != 'exact': vals[m].append(v); grads[m].append(g)
        res = {}
        t_exact = statistics.median(times['exact'])
        for m in methods:
            V, G = torch.tensor(vals[m], dtype=torch.float64), torch.stack(grads[m]).double()
            dev = G.mean(0) - g0.double()
            se_vec = (G.var(0).sum()/draws).sqrt()
            res[m] = {
                'value_mean_rel': (V.mean()/v0).item(), 'value_sd_rel': (V.std()/v0).item(),
                'value_z': ((V.mean() - v0)/(V.std()/draws**0.5)).item(),
                'grad_rel_var': (((G - g0.double())**2).sum((1, 2, 3, 4)).mean()/g0.double().pow(2).sum()).item(),
                'grad_cosine_mean': F.cosine_similarity(G.flatten(1), g0.double().flatten()[None], dim=1).mean().item(),
                'grad_mean_err_rel': (dev.norm()/g0.double().norm()).item(), 'grad_mean_err_se': (dev.norm()/se_vec).item(),
                'time_rel_exact': statistics.median(times[m])/t_exact, 'time_median_s': statistics.median(times[m])}
            if m.startswith('scales'): res[m]['probabilities'] = crits[m].sampler.probabilities(exact.costs(h, w))
            if m.startswith('windows'): res[m]['windows'] = [crits[m].plan(k, h, w) for k in range(crits[m].num_scales)]
            print(f"{config} F={fraction:<6} {m:15s} value sd {res[m]['value_sd_rel']:.3f}  grad rel var {res[m]['grad_rel_var']:.3f}  "
                  f"cos {res[m]['grad_cosine_mean']:.3f}  mean err {res[m]['grad_mean_err_se']:.2f} SE  time x{res[m]['time_rel_exact']:.2f}",
                  file=sys.stderr, flush=True)
        res['exact_time_median_s'] = t_exact
        out['fractions'][str(fraction)] = res
    return out


def rim_share(err: torch.Tensor, width: int = 10) -> float:
    "Share of the squared error that lies within `width` px of the image's edge."
    rim = torch.zeros_like(err, dtype=torch.bool)
    rim[..., :width, :] = True; rim[..., -width:, :] = True; rim[..., :, :width] = True; rim[..., :, -width:] = True
    return (err[rim].pow(2).sum()/err.pow(2).sum()).item()


def border_effect(config: str, fraction: float, seed: int) -> dict:
    "Bias of the naive window estimator (exact expectation in closed form), where it lies; and a check of both estimators by enumeration."
    x, y = batch(config, seed)
    exact = MDFLoss.from_pretrained(WEIGHTS)
    v0, g0 = call(exact, x, y)
    naive = build('windows-naive', fraction, seed)
    v, g = naive_expectation(naive, x, y)
    err = (g - g0).double()
    rim = torch.zeros(x.shape[-2:], dtype=torch.bool)
    rim[:10] = rim[-10:] = True; rim[:, :10] = rim[:, -10:] = True
    out = {'config': config, 'fraction': fraction, 'exact_value': v0,
           'naive_windows': [naive.plan(k, *x.shape[-2:]) for k in range(naive.num_scales)],
           'naive_value_bias_rel': v/v0 - 1, 'naive_grad_bias_rel_l2': (err.norm()/g0.double().norm()).item(),
           'naive_grad_bias_share_in_10px_rim': rim_share(err), 'pixels_in_10px_rim': rim.double().mean().item(),
           'naive_grad_cosine': F.cosine_similarity(g.flatten().double(), g0.flatten().double(), dim=0).item()}
    print(f"border effect {config} F={fraction}: naive windows bias value {out['naive_value_bias_rel']:+.3%}, gradient "
          f"{out['naive_grad_bias_rel_l2']:.3%} (L2), {out['naive_grad_bias_share_in_10px_rim']:.0%} of it in the 10 px rim "
          f"({out['pixels_in_10px_rim']:.0%} of the pixels)", file=sys.stderr, flush=True)
    # Enumeration of every window, float64, a small image and two discriminators: the unbiased estimator's expectation
    # must be the exact loss to round-off, and the naive one's must be the closed form above.
    x64, y64 = x[:1, :, :24, :28].double(), y[:1, :, :24, :28].double()
    small = MDFLoss.from_pretrained(WEIGHTS, num_scales=2).double()
    ve, ge = call(small, x64, y64)
    check = {}
    for m in ('windows', 'windows-naive'):
        crit = build(m, fraction, seed)
        crit = WindowMDF(list(crit.discriminators), meta=crit.meta, num_scales=2, fraction=fraction, naive=crit.naive).double()
        vm, gm = window_expectation(crit, x64, y64)
        check[m] = {'value_rel_diff': vm/ve - 1, 'grad_rel_l2_diff': ((gm - ge).norm()/ge.norm()).item()}
        if m == 'windows-naive':
            vc, gc = naive_expectation(crit, x64, y64)
            check[m]['closed_form_value_rel_diff'] = vc/vm - 1
            check[m]['closed_form_grad_rel_l2_diff'] = ((gc - gm).norm()/gm.norm()).item()
    out['enumeration_check_1x24x28_float64'] = check
    print('enumeration check:', json.dumps(check), file=sys.stderr, flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--draws', type=int, default=40)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--configs', default='8x48,2x256')
    p.add_argument('--fractions', default='0.5,0.25,0.125')
    p.add_argument('--methods', default=','.join(METHODS))
    p.add_argument('--border', default='8x48:0.25', help="config:fraction pairs whose window estimators' exact expectations are computed ('' for none)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    res = {'command': ' '.join([Path(sys.executable).name, *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           'machine': machine(), 'weights': WEIGHTS, 'draws': a.draws, 'load_average_start': os.getloadavg(),
           'output': 'target + 0.5*(noisy - target), sigma 25 (a half-trained denoiser stand-in)', 'configs': {}, 'border_effect': []}
    for spec in filter(None, a.border.split(',')):
        config, fraction = spec.split(':')
        res['border_effect'].append(border_effect(config, float(fraction), a.seed))
    fractions = [float(f) for f in a.fractions.split(',')]
    for config in a.configs.split(','):
        res['configs'][config] = measure(config, fractions, a.methods.split(','), a.draws, a.seed)
    report(res, a.out)


if __name__ == '__main__':
    main()
