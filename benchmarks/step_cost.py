"""Cost of one whole training step (network forward, loss, backward, Adam update) with each loss, side by side.

What a user pays for a loss is the time of a training step, not of the loss alone. This script trains the same
small restoration network (the restoration experiments' quick DnCNN on batches of 8 patches of 48 px, the
`benchmarks/fast_mode_quality.py` protocol) with each loss, in ONE process, round-robin: every method runs a block of
`--block` steps in turn, each on its own copy of the network and optimizer (same initial weights, same batches), and
the median over rounds of the per-step time of a block is reported. A block of several steps averages the stochastic
modes' step-to-step variation in which discriminators they evaluate (a systematic draw has a fixed size, but the
64-channel discriminators cost four times the 32-channel ones).

Methods (all MDF ones with the official denoising weights, the loss default of 8 discriminators):
- l1: the L1 loss (the baseline of the 'per training step vs L1' column);
- reference: the authors' formula as their code computes it (BatchNorm unfolded, discriminator parameters that require
  gradients, so the backward pass also computes their weight gradients, both images through autograd);
- reference-frozen: the same with frozen parameters;
- exact: `MDFLoss()`; bf16: `MDFLoss(dtype=torch.bfloat16)`;
- sampleF, bf16+sampleF: `MDFLoss(sample=F)` (and in bfloat16), the unbiased stochastic evaluation, with the
  sampler's options of `fast_mode_quality.py` (e.g. `sample0.5+image+narrow`);
- vgg16: a VGG16 perceptual loss (5 taps to relu5_3, random weights), the usual perceptual-loss comparison;
- bf16+vgg16: the same VGG16 loss in bfloat16, so that MDF's bf16 mode is also compared with a VGG16 given the same help.

Usage: python benchmarks/step_cost.py [--rounds 15] [--block 4] [--threads 1] [--methods l1,exact,...] [--out FILE]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mdf_loss import MDFLoss
from mdf_loss.restoration.networks import make_network

sys.path.insert(0, str(Path(__file__).parent))
from loss_speed import ReferenceMDF, VGGPerceptual, machine, report  # noqa: E402
from common import quick_denoise_sampler  # noqa: E402
from fast_mode_quality import loss_options  # noqa: E402  (the MDF modes and sampler options, one parser)

WEIGHTS = 'official-denoise'
METHODS = ['l1', 'reference', 'reference-frozen', 'exact', 'bf16', 'sample0.5', 'sample0.25', 'sample0.125',
           'sample0.5+image', 'sample0.25+image',
           'bf16+sample0.5', 'bf16+sample0.25', 'bf16+sample0.125', 'vgg16', 'bf16+vgg16']


class BF16VGG(torch.nn.Module):
    "The VGG16 perceptual loss computed in bfloat16 (weights and activations), the fair peer of MDF's bf16 mode."
    def __init__(self):
        super().__init__()
        self.vgg = VGGPerceptual().to(torch.bfloat16)

    def forward(self, x, y): return self.vgg(x.to(torch.bfloat16), y.to(torch.bfloat16)).float()


def build_loss(method: str, seed: int = 0):
    "The loss function of `method` (callable(output, target) -> scalar)."
    if method == 'l1': return F.l1_loss
    if method == 'vgg16': return VGGPerceptual()
    if method == 'bf16+vgg16': return BF16VGG()
    if method in ('reference', 'reference-frozen'):
        return ReferenceMDF(list(MDFLoss.from_pretrained(WEIGHTS).discriminators), 8, frozen=method == 'reference-frozen')
    if method.split('+')[0] not in ('exact', 'bf16') and not method.split('+')[0].startswith('sample'):
        raise SystemExit(f'unknown method {method!r}; known: {METHODS}')
    return MDFLoss.from_pretrained(WEIGHTS, **loss_options(method, seed))


class Trainer:
    "One method's network, optimizer and loss; `step` runs one training step."
    def __init__(self, method: str, net: torch.nn.Module, lr: float, device: str = 'cpu'):
        self.method, self.net = method, copy.deepcopy(net).to(device).train()
        self.loss = build_loss(method)
        if isinstance(self.loss, torch.nn.Module): self.loss = self.loss.to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def step(self, inp: torch.Tensor, target: torch.Tensor) -> float:
        if hasattr(self.loss, 'zero_grad'): self.loss.zero_grad(set_to_none=True)  # the reference's own weight gradients
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.net(inp), target)
        loss.backward()
        self.opt.step()
        return loss.item()  # waits for the GPU's queue too: the step is over when this returns


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=15)
    p.add_argument('--block', type=int, default=4, help='steps per timed block')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps per method first (the samplers calibrate in the first)')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--methods', default=','.join(METHODS))
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--out')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    cfg, spec, sampler = quick_denoise_sampler(0)
    batches = [tuple(t.to(a.device) for t in sampler.batch(i)) for i in range(16)]
    torch.manual_seed(0)
    net = make_network(spec.networks[0], cfg['size'])
    methods = a.methods.split(',')
    res = {'command': ' '.join([Path(sys.executable).name, *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           'machine': machine(), 'device': a.device, 'load_average_start': os.getloadavg(),
           'setup': f"{spec.networks[0]} ({cfg['size']}), batch {cfg['batch']} x 3 x {cfg['patch']} x {cfg['patch']}, Adam lr {cfg['lr']}, weights {WEIGHTS}",
           'timing': f'median over {a.rounds} round-robin rounds of the mean step time of a block of {a.block} steps', 'methods': {}}
    trainers = {m: Trainer(m, net, cfg['lr'], a.device) for m in methods}
    i = 0
    for m, t in trainers.items():
        for w in range(a.warmup): t.step(*batches[w % len(batches)])
    times = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    for r in range(a.rounds):
        for m, t in trainers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for b in range(a.block): t.step(*batches[(i + b) % len(batches)])
            times[m].append((time.perf_counter() - t0)/a.block); cpu[m].append((time.process_time() - c0)/a.block)
        i += a.block
        print(f'round {r + 1}/{a.rounds}: ' + ', '.join(f'{m} {1000*times[m][-1]:.0f} ms' for m in methods), file=sys.stderr, flush=True)
    step = {m: statistics.median(v) for m, v in times.items()}
    for m in methods:
        res['methods'][m] = {'step_ms': 1000*step[m], 'step_ms_min': 1000*min(times[m]), 'cpu_step_ms': 1000*statistics.median(cpu[m]),
                             'vs_l1': step[m]/step['l1'] if 'l1' in step else None,
                             'vs_vgg16': step[m]/step['vgg16'] if 'vgg16' in step else None,
                             'vs_exact': step[m]/step['exact'] if 'exact' in step else None,
                             'times_ms': [1000*v for v in times[m]]}
        print(f"  {m:18s} {1000*step[m]:8.1f} ms/step  x{res['methods'][m]['vs_l1'] or float('nan'):6.2f} L1  "
              f"x{res['methods'][m]['vs_vgg16'] or float('nan'):5.2f} VGG16", file=sys.stderr, flush=True)
    report(res, a.out)


if __name__ == '__main__':
    main()
