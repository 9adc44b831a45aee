"""Which sampled MDF estimator gives the optimiser the least noise for its cost: parameter-gradient variance.

The screening step before training. A restoration network (the experiments' quick DnCNN) at two points of a run: its
initial weights (the scratch protocol) and after 300 L1 steps (where the finetune protocol starts MDF). On one training
batch (8 patches of 48 px, sigma 25), the exact MDF loss's gradient with respect to the network's parameters, g, is
computed once; then each estimator is called R times on the same batch and network, and we record:

- `rel_var`: E||g^ - g||^2 / ||g||^2 of one call, the noise the optimiser sees per step;
- `rel_var_window4`: the same for the mean of 4 consecutive calls, the noise left after a few steps of averaging
  (what a stratified schedule, which balances its draws across calls, is built to lower);
- `bias_z`: ||mean of the R draws - g|| in standard errors of that mean (unbiased estimators stay below about 3;
  for the stratified schedule, whose draws are balanced rather than independent, the figure is conservative);
- `cost`: the mean multiply-adds of one call's drawn evaluations, as a fraction of the exact loss's (the budget is
  the fraction F: every estimator is compared at the same expected cost);
- `loss_ms`: the mean time of one call's loss forward + backward to the network output, in this process.

The yardstick, per network state: `minibatch_rel_var`, the same ratio for the exact loss's gradient from one training
batch to the next (16 other batches, about their mean): the noise that stochastic gradient descent has anyway.

Estimators (`mdf_loss.loss.ScaleSampler` options, named as in `fast_mode_quality.py`): `sampleF` (one systematic
draw of scales for the whole batch, the 0.2 design), `+image` (a draw per image), `+narrow` (the four 32-channel
discriminators always evaluated, only the wide ones drawn), `+poisson` (independent draws), `+strat` (stratified
across calls: each scale's draws are spread evenly over the calls, each call still unbiased).

Usage: python benchmarks/sampled_gradient_variance.py [--draws 48] [--fractions 0.5,0.25] [--threads 1] [--out FILE]
       python benchmarks/sampled_gradient_variance.py --yardstick-only FILE   (add the minibatch yardstick to a result)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mdf_loss import MDFLoss
from mdf_loss.restoration.networks import make_network
from mdf_loss.restoration.trainer import train_network
from mdf_loss.baselines import get_loss

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, load_average, machine, now, quick_denoise_sampler  # noqa: E402
from fast_mode_quality import loss_options  # noqa: E402

VARIANTS = ('', '+narrow', '+image', '+image+narrow', '+image+poisson', '+strat', '+strat+narrow', '+image+strat+narrow')


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)]).double()


def screen(model, inp, target, mode: str, g: torch.Tensor, draws: int, seed: int) -> dict:
    "One estimator's statistics on this network and batch (see the module docstring)."
    crit = MDFLoss.from_pretrained('official-denoise', **loss_options(mode, seed))
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(inp)
    flat_grad(crit(out, target), params)  # the first call calibrates the running importance (and is exact)
    costs = crit.costs(*target.shape[-2:])
    spent, grads, times = [], [], []
    draw = crit.sampler.draw
    def recording(p, n=1):
        chosen = draw(p, n)
        spent.append(sum(costs[k]*(1 if im is None else len(im)/n) for k, im in chosen.items())/sum(costs))
        return chosen
    crit.sampler.draw = recording
    for _ in range(draws):
        t0 = time.perf_counter()
        value = crit(out, target)
        gout, = torch.autograd.grad(value, out, retain_graph=True)
        times.append(time.perf_counter() - t0)
        grads.append(torch.cat([q.flatten() for q in torch.autograd.grad(out, params, gout, retain_graph=True)]).double())
    G = torch.stack(grads)
    n2 = float(g.square().sum())
    rel = (G - g).square().sum(1)/n2
    w = G[:len(G)//4*4].view(-1, 4, G.shape[1]).mean(1)
    se = (G.var(0).sum()/len(G)).sqrt()
    return dict(rel_var=float(rel.mean()), rel_var_se=float(rel.std()/len(rel)**0.5),
                rel_var_window4=float(((w - g).square().sum(1)/n2).mean()),
                bias_z=float((G.mean(0) - g).norm()/se), cost=float(sum(spent)/len(spent)),
                loss_ms=1000*sorted(times)[len(times)//2],
                probabilities=[round(p, 4) for p in crit.sampler.probabilities(costs)])


def minibatch_noise(model, sampler, batches: int = 16) -> float:
    "E||g_b - mean g||^2 / ||mean g||^2 of the exact loss's parameter gradient over `batches` training batches."
    crit = MDFLoss.from_pretrained('official-denoise')
    params = [q for q in model.parameters() if q.requires_grad]
    G = []
    for b in range(batches):
        inp, target = sampler.batch(20_000 + b)
        G.append(flat_grad(crit(model(inp), target), params))
    G = torch.stack(G)
    mean = G.mean(0)
    return float((G - mean).square().sum(1).mean()*batches/(batches - 1)/mean.square().sum())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--draws', type=int, default=48)
    p.add_argument('--fractions', default='0.5,0.25')
    p.add_argument('--variants', default=','.join(v or 'default' for v in VARIANTS))
    p.add_argument('--pretrain', type=int, default=300, help='L1 steps before the second measurement (the finetune start)')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out')
    p.add_argument('--yardstick-only', metavar='JSON', help='add minibatch_rel_var to each state of this recorded result')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    cfg, spec, sampler = quick_denoise_sampler(a.seed)
    inp, target = sampler.batch(10_000)  # a batch the L1 steps never drew
    torch.manual_seed(a.seed)
    model = make_network(spec.networks[0], cfg['size'])
    variants = ['' if v == 'default' else v for v in a.variants.split(',')]
    res = {'command': command_line(argv), 'date': now(), 'machine': machine(), 'load_average_start': load_average(),
           'network': f"{spec.networks[0]} ({cfg['size']})", 'loss': 'official-denoise', 'draws': a.draws,
           'batch': f"{cfg['batch']} patches of {cfg['patch']} px, sigma 25", 'states': {}}
    if a.yardstick_only:
        res = json.loads(Path(a.yardstick_only).read_text())
        res['yardstick_command'] = command_line(argv)
    for state in ('init', f'l1-{a.pretrain}'):
        if state != 'init':
            train_network(model, get_loss('l1'), sampler, a.pretrain, cfg['lr'], None, progress=False)
        model.train()
        if a.yardstick_only:
            res['states'][state]['minibatch_rel_var'] = minibatch_noise(model, sampler)
            continue
        params = [q for q in model.parameters() if q.requires_grad]
        out = model(inp)
        g = flat_grad(MDFLoss.from_pretrained('official-denoise')(out, target), params)
        rows = {}
        for f in a.fractions.split(','):
            for v in variants:
                mode = f'sample{f}{v}'
                try: rows[mode] = screen(model, inp, target, mode, g, a.draws, a.seed)
                except ValueError as e: rows[mode] = {'error': str(e)}
                print(mode, state, json.dumps(rows[mode]), file=sys.stderr, flush=True)
        res['states'][state] = {'grad_norm': float(g.norm()), 'minibatch_rel_var': minibatch_noise(model, sampler), 'modes': rows}
    res['load_average_end'] = load_average()
    text = json.dumps(res, indent=1)
    print(text)
    out = a.out or a.yardstick_only
    if out: Path(out).write_text(text + '\n')


if __name__ == '__main__':
    main()
