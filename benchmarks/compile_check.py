"""What `torch.compile` does with the MDF loss, and what each choice costs: one forward + backward, side by side.

Variants, all `MDFLoss.from_pretrained('official-sisr')` on a batch of crops of the bundled photo:
- eager (validate=True): the default, one host sync per call for the input check;
- eager-novalidate (validate=False);
- compile-fullgraph-novalidate: `torch.compile(loss, fullgraph=True)` of a loss built with validate=False;
- compile-default: `torch.compile(loss)` of the default loss (Dynamo breaks the graph at the input check);
- compile-fullgraph-validate: `torch.compile(loss, fullgraph=True)` of the default loss, which must fail with an error
  that names validate=False (recorded, not timed).
The first call of each variant (compilation included) is reported apart; the steady cost is the median over
round-robin rounds. Every variant's value is compared with eager's.

Usage: python benchmarks/compile_check.py [--size 96] [--batch 2] [--rounds 7] [--threads N] [--out FILE]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

from mdf_loss import MDFLoss
from mdf_loss.core import bundled_image_path, load_image

sys.path.insert(0, str(Path(__file__).parent))
from loss_speed import machine, report  # noqa: E402


def step(fn, x, y) -> float:
    xg = x.clone().requires_grad_()
    v = fn(xg, y)
    v.backward()
    return v.item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', type=int, default=96)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--out')
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    photo = load_image(bundled_image_path())
    s = a.size
    x = torch.cat([photo[..., i*s//2:i*s//2 + s, i*s:i*s + s] for i in range(a.batch)])
    y = (x + 0.05*torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    res = {'command': ' '.join([Path(sys.executable).name, *sys.argv]), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
           'machine': machine(), 'input': f'{a.batch} x 3 x {s} x {s}', 'variants': {}}

    default = MDFLoss.from_pretrained('official-sisr')
    try:
        torch._dynamo.reset()
        step(torch.compile(default, fullgraph=True), x, y)
        res['fullgraph_with_validate'] = 'compiled (unexpected)'
    except Exception as e:  # what a user sees
        msg = str(e)
        res['fullgraph_with_validate'] = {'error': type(e).__name__, 'names_validate_false': 'validate=False' in msg,
                                          'message': msg.split('\n')[0][:400]}
    torch._dynamo.reset()

    fns = {'eager': default, 'eager-novalidate': MDFLoss.from_pretrained('official-sisr', validate=False),
           'compile-fullgraph-novalidate': torch.compile(MDFLoss.from_pretrained('official-sisr', validate=False), fullgraph=True),
           'compile-default': torch.compile(MDFLoss.from_pretrained('official-sisr'))}
    first, values = {}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter(); values[name] = step(fn, x, y); first[name] = time.perf_counter() - t0
    times = {n: [] for n in fns}
    for _ in range(a.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter(); step(fn, x, y); times[name].append(time.perf_counter() - t0)
    base = statistics.median(times['eager'])
    for name in fns:
        t = statistics.median(times[name])
        res['variants'][name] = {'median_s': t, 'first_call_s': first[name], 'vs_eager': t/base, 'value': values[name],
                                 'rel_diff_vs_eager': abs(values[name] - values['eager'])/values['eager'], 'times_s': times[name]}
        print(f"{name:30s} {1000*t:8.1f} ms  first call {first[name]:6.1f} s  x{t/base:.2f} eager", file=sys.stderr)
    report(res, a.out)


if __name__ == '__main__':
    main()
