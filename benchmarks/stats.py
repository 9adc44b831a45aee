"""Paired verdicts for the benchmark reports: one rule, used by every report that compares two losses.

The restoration experiments are paired by design: for one seed, the two losses start from the same weights, see the
same patches and are scored on the same test images. So the unit of evidence is the per-seed difference A - B, and
the seeds are the replicates:

- `paired(a, b)` takes the per-seed values of A and of B (dicts seed -> value, paired on the seeds both have) or,
  with `b=None`, the per-seed differences themselves (a dict or a list). It returns the differences, their mean with
  a 95% confidence interval (Student t with n - 1 degrees of freedom), the sign counts (how many differences are
  > 0, < 0, == 0), the detectable difference of the comparison, and the verdict by the interval:
  **win** when the lower bound is > 0, **loss** when the upper bound is < 0, **tie** otherwise (the interval
  contains 0). With `higher_is_better=False` the verdict is turned round (a negative difference is the better one);
  the differences and the interval are always A - B. With one seed (or none) there is no interval: the bounds are
  None, the verdict is 'tie' and `reason` says why. With n >= 2 identical differences the interval has zero width:
  a constant positive shift is a win, a constant zero a tie.
- `detectable(sd, n)` is what a study with n seeds can resolve, given the SD of the paired differences: the
  half-width of the 95% interval, t(0.975, n-1) * sd / sqrt(n) (a true difference smaller than this can never be
  called a win or a loss on average), and the minimum detectable effect at 80% power for a two-sided 5% test, by
  the usual approximation (t(0.975, n-1) + t(0.80, n-1)) * sd / sqrt(n) (the true difference that the interval
  excludes 0 for in about 80% of repeated studies).
- `pooled_sd(sds)`: the root mean square of several SDs of equal n (one study-wide SD from many comparisons).

The t quantiles come from scipy when it is importable (`T_SOURCE == 'scipy'`); otherwise from the table below,
t(0.975, df) and t(0.80, df) for df 1..30 to 6 decimals, and beyond 30 from the normal quantile corrected by the
Cornish-Fisher expansion in 1/df (Abramowitz & Stegun 26.7.5; off by less than 2e-6 for df > 30). scipy is not a
dependency of the package; the two sources agree to about 1e-6.

Three seeds give df = 2, where t(0.975) = 4.30: the interval is then 2.5 times as wide as the standard error
suggests, which is the price of three seeds and the reason every verdict is printed beside its detectable difference.
"""
from __future__ import annotations

import math
from statistics import NormalDist, fmean, stdev

try:
    from scipy.stats import t as _scipy_t
    T_SOURCE = 'scipy'
except ImportError:  # scipy is optional
    _scipy_t = None
    T_SOURCE = 'table'

CONFIDENCE = 0.95
POWER = 0.80
VERDICTS = ('win', 'tie', 'loss')

# Student t quantiles for df = 1..30 (from scipy.stats.t.ppf, rounded to 6 decimals)
T_TABLE = {
    0.975: (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
            2.200985, 2.178813, 2.160369, 2.144787, 2.13145, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
            2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.04523, 2.042272),
    0.80: (1.376382, 1.06066, 0.978472, 0.940965, 0.919544, 0.905703, 0.89603, 0.88889, 0.883404, 0.879058,
           0.87553, 0.872609, 0.870152, 0.868055, 0.866245, 0.864667, 0.863279, 0.862049, 0.860951, 0.859964,
           0.859074, 0.858266, 0.85753, 0.856855, 0.856236, 0.855665, 0.855137, 0.854647, 0.854192, 0.853767),
}


def t_quantile(p: float, df: int) -> float:
    "The p quantile of Student's t with df degrees of freedom (scipy, or the table and its expansion; see the module doc)."
    if df < 1: raise ValueError(f'df must be >= 1, not {df}')
    if _scipy_t is not None: return float(_scipy_t.ppf(p, df))
    key = next((k for k in T_TABLE if abs(k - p) < 1e-12), None)
    if key is None: raise ValueError(f'without scipy only the quantiles {sorted(T_TABLE)} are tabulated, not {p}')
    if df <= 30: return T_TABLE[key][df - 1]
    z = NormalDist().inv_cdf(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def detectable(sd: float | None, n: int, confidence: float = CONFIDENCE, power: float = POWER) -> dict:
    """What a paired study of n seeds can resolve when its per-seed differences have standard deviation sd.

    `half_width`: t(1 - alpha/2, n-1) * sd / sqrt(n), the half-width of the interval; `mde`: (t(1 - alpha/2, n-1) +
    t(power, n-1)) * sd / sqrt(n), the minimum detectable effect at that power. None (with a reason) when n < 2 or
    sd is unknown."""
    out = {'n': n, 'sd': sd, 'confidence': confidence, 'power': power, 'half_width': None, 'mde': None}
    if n < 2 or sd is None or not math.isfinite(sd):
        out['reason'] = 'one seed: no spread to estimate' if n < 2 else 'no SD'
        return out
    se = sd / math.sqrt(n)
    tq = t_quantile(1 - (1 - confidence) / 2, n - 1)
    out.update(half_width=tq * se, mde=(tq + t_quantile(power, n - 1)) * se)
    return out


def pooled_sd(sds) -> float | None:
    "Root mean square of SDs from comparisons with the same number of seeds (None when there are none)."
    sds = [s for s in sds if s is not None and math.isfinite(s)]
    return math.sqrt(sum(s * s for s in sds) / len(sds)) if sds else None


def _differences(a, b) -> dict:
    "seed -> A - B on the seeds both have; or the differences given (dict, or list indexed 0..n-1)."
    if b is None:
        return dict(a) if isinstance(a, dict) else dict(enumerate(a))
    if not isinstance(a, dict) or not isinstance(b, dict):
        if len(a) != len(b): raise ValueError('paired lists must have the same length')
        a, b = dict(enumerate(a)), dict(enumerate(b))
    common = [s for s in a if s in b]
    return {s: float(a[s]) - float(b[s]) for s in sorted(common, key=seed_order)}


def seed_order(s):
    "Seeds in numeric order whether they are ints or the strings JSON made of them."
    return (0, int(s), '') if str(s).lstrip('-').isdigit() else (1, 0, str(s))


def paired(a, b=None, *, higher_is_better: bool = True, confidence: float = CONFIDENCE, power: float = POWER) -> dict:
    """A against B, seed by seed: differences A - B, mean, t interval, sign counts, detectable difference, verdict.

    `a`, `b`: dicts seed -> value (paired on the common seeds) or equal-length lists; or `a` alone holding the
    differences. The verdict is for A: 'win' when the interval lies above 0 ('loss' below), turned round when
    `higher_is_better` is False; 'tie' when it contains 0, or when there are fewer than 2 seeds (see `reason`)."""
    per_seed = _differences(a, b)
    d = [float(v) for v in per_seed.values()]
    n = len(d)
    out = {'n': n, 'per_seed': {str(k): v for k, v in per_seed.items()}, 'mean': None, 'sd': None, 'ci': [None, None],
           'half_width': None, 'confidence': confidence, 'positive': sum(v > 0 for v in d),
           'negative': sum(v < 0 for v in d), 'zero': sum(v == 0 for v in d), 'higher_is_better': higher_is_better,
           'verdict': 'tie', 'reason': None}
    if n == 0:
        out['reason'] = 'no paired seeds'
        out['detectable'] = detectable(None, 0, confidence, power)
        return out
    mean = fmean(d)
    out['mean'] = mean
    if n < 2:
        out['reason'] = 'one seed: the interval is undefined'
        out['detectable'] = detectable(None, n, confidence, power)
        return out
    sd = stdev(d, mean)
    det = detectable(sd, n, confidence, power)
    h = det['half_width']
    lo, hi = mean - h, mean + h
    out.update(sd=sd, ci=[lo, hi], half_width=h, detectable=det)
    better = lo > 0 if higher_is_better else hi < 0
    worse = hi < 0 if higher_is_better else lo > 0
    out['verdict'] = 'win' if better else 'loss' if worse else 'tie'
    out['reason'] = (f'the {confidence:.0%} interval lies {"above" if lo > 0 else "below"} 0' if out['verdict'] != 'tie'
                     else f'the {confidence:.0%} interval contains 0')
    return out


def interval_text(r: dict, fmt: str = '{:+.3f}') -> str:
    "'mean (lo to hi)', or 'mean (n = 1, no interval)'; for the reports' tables."
    if r.get('mean') is None: return 'n/a'
    if r['ci'][0] is None: return f"{fmt.format(r['mean'])} (n = {r['n']}, no interval)"
    return f"{fmt.format(r['mean'])} ({fmt.format(r['ci'][0])} to {fmt.format(r['ci'][1])})"


def signs_text(r: dict) -> str:
    "'3+ 0-' : how many per-seed differences are above and below 0."
    return f"{r['positive']}+ {r['negative']}-" + (f" {r['zero']}=" if r['zero'] else '')
