"""Engineering tests of the stochastic evaluation `MDFLoss(..., sample=F)` (notebook 05_loss proves it unbiased).

Fuzzed configurations (every design, per batch and per image, with and without scales always evaluated) check that
one call is exactly the Horvitz-Thompson estimate of the scales and images it drew (value and gradient, replaying
the generator), that `sample=1` is the exact loss bit for bit, and the probability and draw helpers' invariants.
"""
import copy
import math
import random

import pytest
import torch
from torch import nn

from mdf_loss.blocks import Discriminator, init_weights, width_schedule
from mdf_loss.loss import (MDFLoss, ScaleSampler, discriminator_cost, inclusion_probabilities, systematic_sample)


def discriminators(n: int, seed: int = 0, num_layer: int = 5) -> list[Discriminator]:
    g = torch.Generator().manual_seed(seed)
    ds = [Discriminator(w, num_layer=num_layer) for w in width_schedule(n, nfc=8)]
    for d in ds:
        d.apply(lambda m: init_weights(m, g))
        for m in d.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g); m.running_var.uniform_(0.5, 2, generator=g)
    return [d.eval() for d in ds]


def images(n, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g, dtype=dtype)
    return x, (x + 0.1*torch.randn(x.shape, generator=g, dtype=dtype)).clamp(0, 1)


def value_and_grad(crit, x, y):
    xg = x.clone().requires_grad_()
    v = crit(xg, y)
    v.sum().backward()
    return v.detach(), xg.grad


def replay_draw(crit, h, w, n=1):
    "The probabilities and the draw ({scale: images or None}) of the next call of `crit` on `n` images, leaving it unchanged."
    p = crit.sampler.probabilities(crit.costs(h, w))
    g = torch.Generator(); g.set_state(crit.sampler.generator.get_state())
    saved, phases, crit.sampler.generator = crit.sampler.generator, dict(crit.sampler.phases), g
    chosen = crit.sampler.draw(p, n)
    crit.sampler.generator, crit.sampler.phases = saved, phases
    return p, chosen


CONFIGS = []
_rng = random.Random(0)
for i in range(10):
    n = _rng.randint(1, 5)
    CONFIGS.append(dict(seed=i, n=n, num_layer=_rng.choice([3, 5]), size=(_rng.randint(11, 30), _rng.randint(11, 30)),
                        batch=_rng.randint(1, 3), fraction=_rng.choice([0.1, 0.3, 0.5, 0.9]),
                        scale_weights=[_rng.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(n)],
                        layer_weights=[_rng.choice([0.0, 1.0, 3.0]) for _ in range(3)],
                        reduction=_rng.choice(['mean', 'sum', 'none']), mode=_rng.choice(['exact', 'exact', 'pyramid']),
                        design=_rng.choice(['systematic', 'poisson', 'stratified']), per_image=_rng.random() < 0.5))
    if CONFIGS[-1]['fraction'] >= 0.5 and _rng.random() < 0.5: CONFIGS[-1]['always'] = (0,)


@pytest.mark.parametrize('cfg', CONFIGS, ids=[f"cfg{c['seed']}" for c in CONFIGS])
def test_a_call_is_the_weighted_sum_of_the_drawn_scales(cfg):
    "Value and gradient of a sampled call equal sum over drawn k of w_k/p_k times the exact per-scale value and gradient."
    ds = [d.double() for d in discriminators(cfg['n'] + 1, cfg['seed'], cfg['num_layer'])]
    x, y = images(cfg['batch'], *cfg['size'], seed=cfg['seed'], dtype=torch.float64)
    kw = dict(num_scales=cfg['n'], layer_weights=cfg['layer_weights'], reduction=cfg['reduction'], mode=cfg['mode'])
    sampler = ScaleSampler(cfg['fraction'], torch.Generator().manual_seed(1), design=cfg['design'],
                           per_image=cfg['per_image'], always=cfg.get('always', ()))
    crit = MDFLoss(ds, sample=sampler, scale_weights=cfg['scale_weights'], **kw)
    h, w = cfg['size']
    n = cfg['batch']
    for call in range(4):  # the first call calibrates, the next ones sample with the running importance
        p, chosen = replay_draw(crit, h, w, n)
        value, grad = value_and_grad(crit, x, y)
        want_v, want_g = torch.zeros(n, dtype=x.dtype), torch.zeros_like(x)
        for k, imgs in chosen.items():
            assert cfg['scale_weights'][k] > 0 and p[k] > 0
            mask = torch.zeros(n, dtype=x.dtype)
            mask[slice(None) if imgs is None else imgs] = cfg['scale_weights'][k]/p[k]
            one = MDFLoss(ds, scale_weights=[float(j == k) for j in range(cfg['n'])], **{**kw, 'reduction': 'none'})
            v, g = value_and_grad(one, x, y)
            want_v += mask*v
            want_g += mask.view(-1, 1, 1, 1)*g
        if cfg['reduction'] == 'mean': want_v, want_g = want_v.mean(), want_g/n
        elif cfg['reduction'] == 'sum': want_v = want_v.sum()
        torch.testing.assert_close(value, want_v, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(grad, want_g, rtol=1e-10, atol=1e-14)
        if call == 0: assert all(p[k] == 1.0 for k in range(cfg['n']) if cfg['scale_weights'][k] > 0)
        for k in cfg.get('always', ()):
            if cfg['scale_weights'][k] > 0: assert p[k] == 1.0 and chosen[k] is None


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_sample_one_is_the_exact_loss_bit_for_bit(reduction):
    ds = discriminators(4)
    x, y = images(2, 23, 31)
    v1, g1 = value_and_grad(MDFLoss(ds, reduction=reduction, sample=1.0, generator=torch.Generator()), x, y)
    v0, g0 = value_and_grad(MDFLoss(ds, reduction=reduction), x, y)
    assert torch.equal(v1, v0) and torch.equal(g1, g0)


def test_exact_mode_has_no_sampler_and_terms_stay_exact():
    ds = discriminators(3)
    x, y = images(2, 20, 20)
    assert MDFLoss(ds).sampler is None
    sampled = MDFLoss(ds, sample=0.3, generator=torch.Generator().manual_seed(0))
    value_and_grad(sampled, x, y)
    assert torch.equal(sampled.terms(x, y), MDFLoss(ds).terms(x, y))  # `terms` is always the exact evaluation


def test_bfloat16_sampled_matches_bfloat16_exact_when_everything_is_drawn():
    ds = discriminators(3)
    x, y = images(2, 24, 24)
    crit = MDFLoss(ds, dtype=torch.bfloat16, sample=0.5, generator=torch.Generator().manual_seed(0))
    v, g = value_and_grad(crit, x, y)  # calibration call: every scale, weight 1
    v0, g0 = value_and_grad(MDFLoss(ds, dtype=torch.bfloat16), x, y)
    assert torch.equal(v, v0) and torch.equal(g, g0)
    assert crit.sampler.importance is not None and (crit.sampler.importance > 0).all()


def test_no_grad_calls_sample_but_do_not_learn():
    ds = discriminators(4)
    x, y = images(1, 20, 20)
    crit = MDFLoss(ds, sample=0.25, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): v = crit(x, y)
    assert crit.sampler.importance is None and torch.equal(v, MDFLoss(ds)(x, y))  # uncalibrated: exact
    value_and_grad(crit, x, y)
    before = crit.sampler.importance.clone()
    with torch.no_grad(): values = {round(crit(x, y).item(), 6) for _ in range(20)}
    assert len(values) > 1 and torch.equal(crit.sampler.importance, before)


def test_an_empty_draw_gives_zero_and_a_zero_gradient():
    ds = discriminators(3)
    x, y = images(2, 20, 20)
    crit = MDFLoss(ds, sample=1e-6, generator=torch.Generator().manual_seed(0), reduction='none')
    value_and_grad(crit, x, y)
    seen_empty = False
    for _ in range(20):
        _, chosen = replay_draw(crit, 20, 20)
        v, g = value_and_grad(crit, x, y)
        if not chosen:
            seen_empty = True
            assert torch.equal(v, torch.zeros(2)) and torch.equal(g, torch.zeros_like(x))
    assert seen_empty


def test_same_seed_same_draws_and_deepcopy_continues_the_stream():
    ds = discriminators(4)
    x, y = images(2, 20, 20)
    runs = []
    for _ in range(2):
        crit = MDFLoss(ds, sample=0.3, generator=torch.Generator().manual_seed(3))
        runs.append([value_and_grad(crit, x, y) for _ in range(5)])
    for (va, ga), (vb, gb) in zip(*runs): assert torch.equal(va, vb) and torch.equal(ga, gb)
    crit = MDFLoss(ds, sample=0.3, generator=torch.Generator().manual_seed(3))
    value_and_grad(crit, x, y)
    twin = copy.deepcopy(crit)
    for _ in range(4): assert torch.equal(value_and_grad(crit, x, y)[0], value_and_grad(twin, x, y)[0])


def test_default_generator_follows_torch_manual_seed():
    ds = discriminators(4)
    x, y = images(2, 20, 20)
    seqs = []
    for _ in range(2):
        torch.manual_seed(11)
        crit = MDFLoss(ds, sample=0.3)
        seqs.append([value_and_grad(crit, x, y)[0].item() for _ in range(5)])
    assert seqs[0] == seqs[1]


def test_second_derivative_is_refused_in_sampled_mode_too():
    ds = [d.double() for d in discriminators(2)]
    x, y = images(1, 16, 16, dtype=torch.float64)
    crit = MDFLoss(ds, sample=0.5, generator=torch.Generator().manual_seed(0))
    xg = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match='no second derivative'):
        torch.autograd.grad(crit(xg, y), xg, create_graph=True)


@pytest.mark.parametrize('seed', range(20))
def test_inclusion_probabilities_meet_the_budget(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 10, (1,), generator=g))
    costs = (torch.rand(n, generator=g)*10).tolist()
    costs[0] = 0.0 if n > 2 and seed % 3 == 0 else costs[0]
    m = (torch.rand(n, generator=g)*5 + 0.01).tolist()
    f = float(torch.rand((), generator=g))*0.99 + 0.01
    p = inclusion_probabilities(m, costs, f)
    assert all(0 <= v <= 1 for v in p)
    assert math.isclose(sum(pk*ck for pk, ck in zip(p, costs)), f*sum(costs), rel_tol=1e-9)
    ratio = [pk/(mk/ck**0.5) for pk, mk, ck in zip(p, m, costs) if ck > 0 and pk < 1]
    assert max(ratio, default=1) - min(ratio, default=1) < 1e-9*max(ratio, default=1)  # uncapped: proportional to m/sqrt(c)
    capped = [mk/ck**0.5 for pk, mk, ck in zip(p, m, costs) if ck > 0 and pk == 1]
    free = [mk/ck**0.5 for pk, mk, ck in zip(p, m, costs) if ck > 0 and pk < 1]
    assert not capped or not free or min(capped) >= max(free)  # the capped ones are the most important per cost
    assert all(pk == 0 for pk, ck in zip(p, costs) if ck == 0)


@pytest.mark.parametrize('design', ['systematic', 'poisson', 'stratified'])
def test_draw_frequencies_are_the_probabilities(design):
    p = [0.05, 0.3, 0.5, 0.75, 1.0, 0.0, 0.2]
    s = ScaleSampler(0.5, torch.Generator().manual_seed(0), design=design, per_image=False)
    n = 20000
    picks = [s.draw(p) for _ in range(n)]
    for k, pk in enumerate(p):
        f = sum(k in d for d in picks)/n
        assert abs(f - pk) <= 4.5*(pk*(1 - pk)/n)**0.5 + 1e-12, (k, pk, f)
        assert all(d[k] is None for d in picks if k in d)  # one draw for the whole batch
    sizes = {len(d) for d in picks}
    if design == 'systematic': assert sizes <= {math.floor(sum(p)), math.ceil(sum(p))}
    else: assert len(sizes) > 2
    if design == 'stratified':  # each scale's draws spread evenly: in any 20 calls, 20 p_k of them, rounded
        for k, pk in enumerate(p):
            hits = [k in d for d in picks]
            counts = {sum(hits[i:i + 20]) for i in range(0, n - 20, 7)}
            assert counts <= {math.floor(20*pk), math.ceil(20*pk)}, (k, counts)


@pytest.mark.parametrize('design', ['systematic', 'poisson', 'stratified'])
def test_per_image_draws_take_each_image_with_its_probability(design):
    p, n, calls = [0.1, 0.35, 1.0, 0.0], 8, 6000
    s = ScaleSampler(0.5, torch.Generator().manual_seed(1), design=design, per_image=True)
    counts = torch.zeros(len(p), n)
    sizes = {k: set() for k in range(len(p))}
    for _ in range(calls):
        for k, imgs in s.draw(p, n).items():
            if imgs is None: counts[k] += 1; sizes[k].add(n); continue
            assert imgs.dtype == torch.long and imgs.unique().numel() == imgs.numel() and 0 < imgs.numel() < n
            counts[k, imgs] += 1; sizes[k].add(imgs.numel())
    for k, pk in enumerate(p):
        f = counts[k]/calls
        assert (f - pk).abs().max() <= 4.5*(pk*(1 - pk)/calls)**0.5 + 1e-12, (k, pk, f)
    assert sizes[2] == {n} and not sizes[3]
    if design != 'poisson': assert sizes[0] <= {1} and sizes[1] <= {2, 3}  # n p_k images, rounded down or up
    else: assert len(sizes[1]) > 2


def test_stratified_probabilities_stay_fixed_after_calibration():
    s = ScaleSampler(0.3, torch.Generator().manual_seed(0), design='stratified')
    s.update({0: 1.0, 1: 2.0, 2: 3.0}, 3)
    before = s.probabilities([1.0, 2.0, 3.0])
    s.update({0: 50.0}, 3)
    assert s.probabilities([1.0, 2.0, 3.0]) == before


def test_always_scales_are_evaluated_and_the_rest_share_the_budget():
    p = inclusion_probabilities([1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 4.0, 4.0], 0.5, always=[0, 1])
    assert p[:2] == [1.0, 1.0] and math.isclose(2 + 4*(p[2] + p[3]), 0.5*10)
    s = ScaleSampler(0.5, always='narrow')
    assert s.always_of([1.0, 1.0, 4.0, 4.0, 0.0]) == [0, 1] and s.always_of([3.0, 3.0]) == []
    with pytest.raises(ValueError, match='raise the fraction'):
        inclusion_probabilities([1.0]*4, [1.0, 1.0, 4.0, 4.0], 0.1, always=[0, 1])


def test_systematic_sample_handles_round_off_at_one():
    g = torch.Generator().manual_seed(0)
    p = [1/3]*3 + [1.0, 1 - 1e-16]
    for _ in range(200):
        d = systematic_sample(p, g)
        assert 3 in d and len(d) in (2, 3)


def test_discriminator_cost_counts_multiply_adds():
    d = discriminators(1)[0]
    ws = [d.head.conv.weight] + [b.conv.weight for b in d.body] + [d.tail.weight]
    x = torch.rand(1, 3, 19, 23)
    want, h = 0, x
    for layer in [d.head.conv] + [b.conv for b in d.body] + [d.tail]:
        h = layer(h)
        want += h.numel()*layer.weight[0].numel()
    assert discriminator_cost(ws, 19, 23) == want
    crit = MDFLoss(discriminators(3), scale_weights=[1, 0, 2])
    assert crit.costs(19, 23)[1] == 0 and crit.costs(19, 23)[0] > 0


def test_sampler_importance_is_floored_so_no_scale_is_starved():
    s = ScaleSampler(0.2, torch.Generator().manual_seed(0))
    s.update({0: 1.0, 1: 0.0, 2: 1e-12}, 3)
    p = s.probabilities([1.0, 1.0, 1.0])
    assert min(p) > 0 and math.isclose(sum(p), 0.6)


@pytest.mark.parametrize('kwargs, error, text', [
    (dict(sample=0), ValueError, '(0, 1]'), (dict(sample=2), ValueError, '(0, 1]'), (dict(sample=float('inf')), ValueError, '(0, 1]'),
    (dict(sample='0.5'), TypeError, 'sample=0.25'), (dict(sample=False), TypeError, 'sample=0.25'),
    (dict(sample=0.5, generator=torch.default_generator.get_state()), TypeError, 'torch.Generator'),
    (dict(generator=torch.Generator()), ValueError, 'pass sample= too'),
    (dict(sample=ScaleSampler(0.5), generator=torch.Generator()), ValueError, 'drop generator='),
])
def test_bad_arguments_name_the_fix(kwargs, error, text):
    with pytest.raises(error, match=text.replace('(', r'\(').replace(')', r'\)').replace('.', r'\.')):
        MDFLoss(discriminators(2), **kwargs)
