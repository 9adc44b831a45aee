"""Cost of one forward + backward (w.r.t. the restored image) of the MDF loss and of the losses it is compared with.

All timings come from ONE process, taken round-robin (every method once per round) so that a change in machine load
hits them alike; the median over the rounds is reported. Peak memory is measured per method in a fresh subprocess:
on CUDA with `torch.cuda.max_memory_allocated`, on CPU as the rise of the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs just before the call) over its resident set before the call.

Methods:
- reference: the formula as the authors' code computes it, kept here: unfolded BatchNorm, parameters that require
  gradients (as `torch.load` of their files gives them), both images through autograd;
- reference-frozen: the same with frozen parameters (what a careful user of their code would get);
- folded-autograd: BatchNorm folded, target without autograd, autograd through the output (the first MDFLoss);
- exact: `MDFLoss()` as shipped (hand-written backward per discriminator, channels-last, target and output in two
  forward passes), plus the ablations exact-nchw (without channels-last) and exact-batched (output and target in
  one batched forward pass);
- exact-bf16 (`dtype=torch.bfloat16`), exact-compile (`compile=True`), pyramid (`mode='pyramid'`), and on CUDA
  exact-bf16-compile (both flags: the GPU configuration);
- sampleF and bf16-sampleF (`sample=F`, and with bfloat16): the unbiased stochastic evaluation, a random subset of the
  discriminators costing the fraction F of the exact loss on average (the warm-up call calibrates it and is exact; its
  cost varies with the draw, so `mean_s` is reported beside the median);
- vgg16: VGG16 perceptual loss, MSE of 5 taps (relu1_2 .. relu5_3), random weights, target without autograd;
- lpips-alex: the LPIPS AlexNet feature stack (5 taps, unit-normalised channels, 1x1 linear heads), random weights.

Usage: python benchmarks/loss_speed.py [--out benchmarks/results/loss_speed_cpu.json] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from mdf_loss import MDFLoss
from mdf_loss.core import bundled_image_path, load_image, resize
from mdf_loss.loss import feature_distance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402,F401  (the other benchmarks import it from here too)

WEIGHTS = 'official-sisr'


# ---------------------------------------------------------------------------------------------------------------------
# The comparison losses, written here so that the benchmark does not depend on how the package implements them
# ---------------------------------------------------------------------------------------------------------------------

class ReferenceMDF(nn.Module):
    "The authors' formula: every D_k on both images with autograd, BatchNorm unfolded, per-image sum, batch mean."
    def __init__(self, discriminators, num_scales: int, frozen: bool):
        super().__init__()
        self.ds = nn.ModuleList([copy.deepcopy(d).eval() for d in discriminators[:num_scales]])
        for p in self.ds.parameters(): p.requires_grad_(not frozen)

    def forward(self, x, y):
        total = 0
        for d in self.ds:
            for a, b in zip(d.features(x), d.features(y)): total = total + ((a - b)**2).mean(dim=(1, 2, 3))
        return total.mean()

    def zero_grad(self, set_to_none: bool = True):
        for p in self.ds.parameters(): p.grad = None


class FoldedAutograd(nn.Module):
    "BatchNorm folded (MDFLoss.features), target under no_grad, autograd through the output: the first MDFLoss."
    def __init__(self, crit: MDFLoss):
        super().__init__()
        self.crit = crit

    def forward(self, x, y):
        total = 0
        for k in range(self.crit.num_scales):
            with torch.no_grad(): fy = self.crit.features(y, k)
            for a, b in zip(self.crit.features(x, k), fy): total = total + ((a - b)**2).mean(dim=(1, 2, 3))
        return total.mean()


def _chain(x, params, keep: bool):
    n, h, taps, acts = len(params), x, [], []
    for j, (w, b) in enumerate(params):
        h = F.conv2d(h, w, b)
        if j < n - 1:
            h = F.leaky_relu_(h, 0.2)
            if keep: acts.append(h)
        if j in (0, n - 2, n - 1): taps.append(h)
    return taps, acts


def batched_distance(x, y, params, tap_weights=(1.0, 1.0, 1.0), need_grad=True):
    "`mdf_loss.loss.feature_distance` with output and target concatenated into one forward pass (ablation)."
    with torch.no_grad():
        n_img, n = x.shape[0], len(params)
        taps, acts = _chain(torch.cat([x, y]), params, True)
        diffs = [t[:n_img] - t[n_img:] for t in taps]
        acts = [a[:n_img] for a in acts]
        del taps
        terms = torch.stack([d.square().mean((1, 2, 3)) for d in diffs], 1)
        scale = [2*float(v)/d[0].numel() for v, d in zip(tap_weights, diffs)]
        g = diffs[2].mul_(scale[2])
        for j in range(n - 1, 0, -1):
            g = F.conv_transpose2d(g, params[j][0])
            if j - 1 == n - 2: g.add_(diffs[1], alpha=scale[1])
            if j - 1 == 0: g.add_(diffs[0], alpha=scale[0])
            g = torch.ops.aten.leaky_relu_backward(g, acts[j - 1], 0.2, True)
            acts[j - 1] = None
        return terms, F.conv_transpose2d(g, params[0][0])


class ManualMDF(nn.Module):
    "The exact mode's per-discriminator function called directly, in a chosen memory layout (ablations)."
    def __init__(self, crit: MDFLoss, channels_last: bool, fn=feature_distance):
        super().__init__()
        self.crit, self.fn = crit, fn
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x, y):
        x = x.contiguous(memory_format=self.fmt); y = y.contiguous(memory_format=self.fmt)
        return _ManualLoss.apply(x, y, self)


class _ManualLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, m):
        total, grad = 0, None
        for k in range(m.crit.num_scales):
            params = [(w.contiguous(memory_format=m.fmt), b) for w, b in m.crit._params(k, x.dtype)]
            terms, g = m.fn(x, y, params, (1.0, 1.0, 1.0), True)
            total = total + terms.sum(1)
            grad = g if grad is None else grad.add_(g)
        ctx.save_for_backward(grad)
        return total.mean()

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad*g/grad.shape[0], None, None


VGG16 = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512]
VGG16_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in the feature stack


class VGGPerceptual(nn.Module):
    "Sum over relu1_2..relu5_3 of the MSE between VGG16 features (ImageNet-normalised input), random weights."
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        layers, c = [], 3
        for v in VGG16:
            if v == 'M': layers.append(nn.MaxPool2d(2, 2))
            else: layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]; c = v
        self.features = nn.Sequential(*layers[:VGG16_TAPS[-1] + 1]).eval().requires_grad_(False)
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def taps(self, x):
        h, out = (x - self.mean)/self.std, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG16_TAPS: out.append(h)
        return out

    def forward(self, x, y):
        with torch.no_grad(): fy = self.taps(y)
        return sum(F.mse_loss(a, b) for a, b in zip(self.taps(x), fy))


class LPIPSAlex(nn.Module):
    "LPIPS with the AlexNet trunk: scaled input, 5 ReLU taps, unit channel norm, 1x1 linear heads; random weights."
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True)).eval().requires_grad_(False)
        self.taps_at = (1, 4, 7, 9, 11)
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in (64, 192, 384, 256, 256)]).requires_grad_(False)
        for lin in self.lins: lin.weight.data.abs_()
        self.register_buffer('shift', torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1))
        self.register_buffer('scale', torch.tensor([.458, .448, .450]).view(1, 3, 1, 1))

    def taps(self, x):
        h, out = ((2*x - 1) - self.shift)/self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps_at: out.append(h/(h.norm(dim=1, keepdim=True) + 1e-10))
        return out

    def forward(self, x, y):
        with torch.no_grad(): fy = self.taps(y)
        return sum(lin((a - b)**2).mean((2, 3)).squeeze(1) for lin, a, b in zip(self.lins, self.taps(x), fy)).mean()


# ---------------------------------------------------------------------------------------------------------------------
# Setup, timing, memory
# ---------------------------------------------------------------------------------------------------------------------

CPU_METHODS = ['reference', 'reference-frozen', 'folded-autograd', 'exact', 'exact-nchw', 'exact-batched', 'exact-bf16',
               'exact-compile', 'pyramid', 'exact-scales4', 'vgg16', 'lpips-alex']


def build(method: str, num_scales: int, device) -> nn.Module:
    "The loss module of `method` on `device`."
    if method in ('reference', 'reference-frozen'):
        crit = MDFLoss.from_pretrained(WEIGHTS)
        return ReferenceMDF(list(crit.discriminators), num_scales, frozen=method == 'reference-frozen').to(device)
    if method == 'vgg16': return VGGPerceptual().to(device)
    if method == 'lpips-alex': return LPIPSAlex().to(device)
    kw = {'exact': {}, 'exact-bf16': dict(dtype=torch.bfloat16), 'exact-compile': dict(compile=True),
          'exact-bf16-compile': dict(dtype=torch.bfloat16, compile=True), 'pyramid': dict(mode='pyramid')}.get(method, {})
    if method == 'exact-scales4': num_scales = min(num_scales, 4)  # fewer taps: the four coarsest-trained (narrowest) D_k
    if 'sample' in method:  # sampleF or bf16-sampleF
        kw = dict(sample=float(method.split('sample')[1]), generator=torch.Generator().manual_seed(0))
        if method.startswith('bf16-'): kw['dtype'] = torch.bfloat16
    crit = MDFLoss.from_pretrained(WEIGHTS, num_scales=num_scales, **kw).to(device)
    if method == 'folded-autograd': return FoldedAutograd(crit)
    if method == 'exact-nchw': return ManualMDF(crit, channels_last=False)
    if method == 'exact-batched': return ManualMDF(crit, channels_last=True, fn=batched_distance)
    return crit


def images(batch: int, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    "A batch of crops of the bundled photo (target) and the same with Gaussian noise, sigma 0.1 (output)."
    photo = load_image(bundled_image_path())
    big = resize(photo, 2*size)
    crops = [big[..., (i*size//2) % (big.shape[-2] - size + 1):, (i*size//3) % (big.shape[-1] - size + 1):][..., :size, :size]
             for i in range(batch)]
    y = torch.cat(crops).contiguous()
    x = (y + 0.1*torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return x.to(device), y.to(device)


def step(loss_fn, x, y):
    "One forward + backward w.r.t. the output; returns the loss value and the gradient."
    if hasattr(loss_fn, 'zero_grad'): loss_fn.zero_grad(set_to_none=True)
    out = x.detach().clone().requires_grad_()
    loss = loss_fn(out, y)
    loss.backward()
    return loss.detach(), out.grad


def sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize(device)


def _status_kb(key: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(key + ':'): return int(line.split()[1])
    raise KeyError(key)


def peak_memory_child(method: str, batch: int, size: int, num_scales: int, device: str) -> dict:
    "Run in a fresh process: the peak memory (MB) that one forward + backward adds."
    loss_fn = build(method, num_scales, device)
    x, y = images(batch, size, device)
    if torch.device(device).type == 'cuda':
        step(loss_fn, x, y); sync(device)  # warm-up: cuDNN workspaces and autotuning are not the loss's own
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(loss_fn, x, y); sync(device)
        return {'peak_mb': (torch.cuda.max_memory_allocated(device) - base)/2**20, 'how': 'torch.cuda.max_memory_allocated'}
    if method == 'exact-compile':
        return {'peak_mb': None, 'how': 'not measured: compiling in the same process raises the peak first'}
    Path('/proc/self/clear_refs').write_text('5')  # reset the peak resident set to the current one
    base = _status_kb('VmRSS')
    step(loss_fn, x, y)
    return {'peak_mb': (_status_kb('VmHWM') - base)/1024, 'how': 'VmHWM - VmRSS before the call, fresh process, no warm-up'}


def peak_memory(method, batch, size, num_scales, device, threads) -> dict:
    cmd = [sys.executable, __file__, '--child', method, '--batch', str(batch), '--size', str(size),
           '--num-scales', str(num_scales), '--device', str(device), '--threads', str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0: return {'peak_mb': None, 'how': 'child failed: ' + res.stderr.strip().splitlines()[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    "Relative difference of `a` from `b` in L2 norm."
    return ((a.double() - b.double()).norm()/b.double().norm()).item()


def run_config(methods, batch, size, num_scales, device, repeats, threads, memory: bool) -> dict:
    "Time every method on one (batch, size), round-robin, and compare values and gradients with the reference."
    x, y = images(batch, size, device)
    fns, setup_s, values, grads = {}, {}, {}, {}
    for m in methods:
        t0 = time.perf_counter()
        fns[m] = build(m, num_scales, device)
        values[m], grads[m] = step(fns[m], x, y)  # warm-up (and compilation for exact-compile)
        sync(device)
        setup_s[m] = time.perf_counter() - t0
    wall = {m: [] for m in methods}; cpu = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            sync(device); t0, c0 = time.perf_counter(), time.process_time()
            step(fns[m], x, y); sync(device)
            wall[m].append(time.perf_counter() - t0); cpu[m].append(time.process_time() - c0)
    out = {}
    ref_t = statistics.median(wall['reference']) if 'reference' in wall else None
    vgg_t = statistics.median(wall['vgg16']) if 'vgg16' in wall else None
    for m in methods:
        t = statistics.median(wall[m])
        r = {'median_s': t, 'mean_s': statistics.mean(wall[m]), 'min_s': min(wall[m]), 'times_s': wall[m], 'cpu_median_s': statistics.median(cpu[m]),
             'first_call_s': setup_s[m], 'value': values[m].item(),
             'speedup_vs_reference': ref_t/t if ref_t else None, 'cost_vs_vgg16': t/vgg_t if vgg_t else None}
        if m.startswith(('reference', 'folded', 'exact', 'pyramid')) and 'reference' in values:
            r['value_rel_diff_vs_reference'] = abs(values[m].item()/values['reference'].item() - 1)
            r['grad_rel_l2_diff_vs_reference'] = rel(grads[m], grads['reference'])
        if memory: r.update(peak_memory(m, batch, size, num_scales, device, threads))
        out[m] = r
        print(f"  {m:18s} {t:8.3f} s (min {min(wall[m]):.3f})  x{(ref_t or t)/t:5.2f} vs reference  "
              f"{t/vgg_t if vgg_t else float('nan'):5.2f} x vgg16  peak {r.get('peak_mb')} MB", file=sys.stderr, flush=True)
    return out


def report(res: dict, out: str | None = None) -> None:
    "Finish a benchmark's result: the load average at its end; print it as JSON, and also write it to `out`."
    res['load_average_end'] = os.getloadavg()
    text = json.dumps(res, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + '\n')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', help='also write the JSON here')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    p.add_argument('--num-scales', type=int, default=8, help='discriminators used (the loss default is 8)')
    p.add_argument('--methods', default=None, help='comma-separated subset of ' + ','.join(CPU_METHODS))
    p.add_argument('--configs', default=None, help="comma-separated batch x size list, e.g. '2x128,2x256'")
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory subprocesses')
    p.add_argument('--device', default=None)
    p.add_argument('--child', help=argparse.SUPPRESS)
    p.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    p.add_argument('--size', type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    device = a.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if a.child:
        print(json.dumps(peak_memory_child(a.child, a.batch, a.size, a.num_scales, device)))
        return
    methods = a.methods.split(',') if a.methods else CPU_METHODS + (['exact-bf16-compile'] if device.startswith('cuda') else [])
    if device == 'cpu': configs = [(2, 128), (2, 256)]
    else: configs = [(16, 256)]
    if a.configs: configs = [tuple(int(v) for v in c.split('x')) for c in a.configs.split(',')]
    res = {'command': ' '.join([Path(sys.executable).name, *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           'machine': machine(), 'device': device, 'weights': WEIGHTS, 'num_scales': a.num_scales, 'repeats': a.repeats,
           'load_average_start': os.getloadavg(), 'timing': 'wall-clock median over round-robin repeats; cpu_median_s is process CPU time',
           'configs': {}}
    for batch, size in configs:
        print(f'batch {batch}, {size} x {size} px', file=sys.stderr, flush=True)
        res['configs'][f'{batch}x{size}'] = run_config(methods, batch, size, a.num_scales, device, a.repeats,
                                                        a.threads or torch.get_num_threads(), not a.no_memory)
    report(res, a.out)


if __name__ == '__main__':
    main()
