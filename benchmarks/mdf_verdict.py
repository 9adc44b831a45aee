"""Where MDF wins and where it loses: the best training protocol for each MDF loss, per task, and its margin against L1.

Reads the `results.json` files that `mdf-loss experiment` wrote (one or more per task: plain, `--protocol finetune
--sweep`, `--lr-grid ...`) and compares every MDF run with the L1 run of the same file, network and protocol, that
is with the same steps, seeds and data. Margins are averaged over the test sets (and JPEG qualities); the range
over them is given too. The best protocol of an MDF loss is the one with the highest mean PSNR margin, found
separately for MDF as the main loss (alone, from scratch or fine-tuning) and for L1 + w * MDF (where a tiny w makes
the run nearly L1).

The verdict is paired by seed (`benchmarks/stats.py`, the rule of every report): the MDF run and its L1 run share
the seed, so each seed gives one margin; a setting trained with several seeds (the same file name with `_seedN`, or
several files) gets the mean margin with its 95% t interval, and wins when the interval lies above 0, loses when
below, ties otherwise, with the detectable difference beside it. A setting run with one seed has no interval: its
verdict is a tie, whatever its margin. The `direction` column only says which way the one-seed margin points, with
the experiment tables' display band (|PSNR| <= 0.05 dB, |SSIM|, |HaarPSI| <= 0.001 count as level): a description,
not a test.

    python benchmarks/mdf_verdict.py benchmarks/results/restoration_*.json --out benchmarks/results/mdf_verdict

prints JSON and writes OUT.json and OUT.md.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stats  # noqa: E402  (benchmarks/stats.py: the paired verdicts of every report)

METRICS = ('psnr', 'ssim', 'haarpsi')
TIES = {'psnr': 0.05, 'ssim': 0.001, 'haarpsi': 0.001}  # the experiment tables' display band: a description, not a test


def family(run: str) -> str | None:
    "Which MDF loss a run name uses: 'mdf-official', 'mdf' (our own), or None."
    if 'mdf-official' in run: return 'mdf-official'
    if 'mdf' in run.replace('msssim', ''): return 'mdf'
    return None


def lr_tuned(res: dict) -> bool:
    "Whether the experiment chose learning rates from a grid."
    return len({c['lr'] for s in res.get('sweep', {}).values() if isinstance(s, dict) and s.get('run')
                for c in s.get('candidates', [])}) > 1


def setting(res: dict, row: dict, source: str) -> str:
    "A human name for how a run was trained."
    proto = row.get('protocol') or 'scratch'
    kind = 'l1+w*mdf' if row['run'].startswith('l1+') else 'alone'
    return f"{proto}, {kind}{', lr tuned' if lr_tuned(res) else ''} ({Path(source).stem})"


def collect(paths):
    "Per (task, network, MDF loss, setting): the margins against L1 of the same file, network and protocol."
    out = []
    for path in paths:
        res = json.loads(Path(path).read_text())
        for network, keys in res['tables'].items():
            by_proto = {}
            for key, rows in keys.items():
                for row in rows:
                    if row['run'] == 'input': continue
                    by_proto.setdefault((row.get('protocol') or 'scratch', row['run']), {})[key] = row
            for (proto, run), per_key in by_proto.items():
                fam = family(run)
                l1 = by_proto.get((proto, 'l1'))
                if fam is None or l1 is None: continue
                margins = {m: [per_key[k]['mean'][m] - l1[k]['mean'][m] for k in per_key if per_key[k]['mean'].get(m) is not None]
                           for m in METRICS}
                any_row = next(iter(per_key.values()))
                out.append({'task': res['task'], 'network': network, 'loss': fam, 'run': run, 'protocol': proto,
                            'kind': 'l1+w*mdf' if run.startswith('l1+') else 'alone',
                            'setting': setting(res, any_row, path), 'lr': any_row.get('lr'), 'weight': any_row.get('weight'),
                            'l1_lr': next(iter(l1.values())).get('lr'), 'source': str(path), 'command': res['command'],
                            'steps': res['config']['steps'], 'seed': res['seed'], 'tuned': lr_tuned(res),
                            'mean': {m: sum(v)/len(v) for m, v in margins.items() if v},
                            'range': {m: [min(v), max(v)] for m, v in margins.items() if v},
                            'sets': sorted(per_key)})
    return out


def across_seeds(rows) -> list[dict]:
    "MDF runs trained the same way with several seeds: each seed's mean margins, and their mean, min and max."
    groups = {}
    for r in rows:
        key = (r['task'], r['network'], r['loss'], r['run'], r['protocol'], r['tuned'])
        groups.setdefault(key, {}).setdefault(r['seed'], r['mean'])
    out = []
    for (task, network, loss, run, protocol, tuned), by_seed in sorted(groups.items()):
        if len(by_seed) < 2: continue
        summary = {m: {'mean': sum(v[m] for v in by_seed.values())/len(by_seed), 'min': min(v[m] for v in by_seed.values()),
                       'max': max(v[m] for v in by_seed.values())} for m in METRICS if all(m in v for v in by_seed.values())}
        paired = {m: stats.paired({k: v[m] for k, v in sorted(by_seed.items())}) for m in METRICS if all(m in v for v in by_seed.values())}
        out.append({'task': task, 'network': network, 'loss': loss, 'run': run, 'protocol': protocol, 'tuned': tuned,
                    'seeds': sorted(by_seed), 'per_seed': {str(k): v for k, v in sorted(by_seed.items())}, 'summary': summary,
                    'paired': paired})
    return out


def group_key(r: dict) -> tuple:
    "Runs trained the same way (apart from the seed)."
    return (r['task'], r['network'], r['loss'], r['run'], r['protocol'], r['tuned'])


def attach_paired(rows, groups) -> None:
    """Each run's paired verdict per measure: that of its group in `across_seeds` (interval and all) when the same
    setting was trained with several seeds, else the one-seed comparison, which has no interval: a tie."""
    by_key = {group_key(g): g for g in groups}
    for r in rows:
        g = by_key.get(group_key(r))
        paired = g['paired'] if g else {m: stats.paired({r['seed']: v}) for m, v in r['mean'].items()}
        r['seeds_compared'] = g['seeds'] if g else [r['seed']]
        r['paired_verdict'] = {m: p['verdict'] for m, p in paired.items()}
        r['paired_reason'] = 'the interval over the seeds of its setting (across_seeds)' if g else 'one seed: the interval is undefined'


def study_detectable(groups) -> dict:
    "Per measure: the SD of the per-seed margins pooled over the settings run with several seeds, and what their n resolves."
    out = {}
    for m in METRICS:
        res = [g['paired'][m] for g in groups if m in g['paired'] and g['paired'][m]['sd'] is not None]
        if res:
            out[m] = {**stats.detectable(stats.pooled_sd([r['sd'] for r in res]), min(r['n'] for r in res)), 'settings': len(res)}
    return out


def direction(margin: dict) -> str:
    "Which way the mean margin points, with the display band of the experiment tables (a description, not a test)."
    words = []
    for m in METRICS:
        v = margin.get(m)
        if v is None: continue
        words.append(f"{m} {'wins' if v > TIES[m] else 'loses' if v < -TIES[m] else 'ties'}")
    return ', '.join(words)


verdict = direction  # the name this function had


def paired_text(r: dict, groups=()) -> str:
    "The paired verdict per measure: 'psnr tie (1 seed)', or the verdict, interval and detectable difference of its group."
    g = next((g for g in groups if group_key(g) == group_key(r)), None)
    if g is None: return '; '.join(f"{m} {v} (1 seed)" for m, v in r['paired_verdict'].items())
    words = []
    for m in METRICS:
        p = g['paired'].get(m)
        if p is None: continue
        f = {'psnr': '{:+.2f}', 'ssim': '{:+.4f}', 'haarpsi': '{:+.4f}'}[m]
        words.append(f"{m} **{p['verdict']}** {stats.interval_text(p, f)}, {p['n']} seeds, detectable {f.format(p['half_width'])[1:]}")
    return '; '.join(words)


def best(rows):
    "Per (task, network, MDF loss, kind): the row with the highest mean PSNR margin; kind is MDF alone or L1 + w*MDF."
    top = {}
    for r in rows:
        k = (r['task'], r['network'], r['loss'], r['kind'])
        if k not in top or r['mean']['psnr'] > top[k]['mean']['psnr']: top[k] = r
    return [top[k] for k in sorted(top)]


def markdown(rows, bests, command: str = '', seeds=(), detect: dict | None = None) -> str:
    fmt = {'psnr': '{:+.2f}', 'ssim': '{:+.4f}', 'haarpsi': '{:+.4f}'}
    def cell(r, m):
        if m not in r['mean']: return 'n/a'
        lo, hi = r['range'][m]
        return f"{fmt[m].format(r['mean'][m])} ({fmt[m].format(lo)} to {fmt[m].format(hi)})"
    detect = detect or {}
    lines = ['# MDF against L1: the best protocol per task', '', f'Made by `{command}`.', '',
             'Margins are MDF minus L1, trained with the same steps, seeds and data (same results file, network and',
             'protocol), averaged over the test sets; the range over the sets is in brackets.', '',
             '**Verdict** (paired by seed, `benchmarks/stats.py`, the rule of every report): each seed gives one margin (the',
             'MDF run and its L1 run share the seed); with several seeds, the mean margin and its 95% Student-t interval,',
             '**win** when the interval lies above 0, **loss** when below, **tie** when it contains 0, beside the detectable',
             "difference (the interval's half-width). A setting run with one seed has no interval, so its verdict is a tie",
             'whatever its margin. **Direction** only says which way the one-seed margin points, with the experiment',
             "tables' display band (|PSNR| <= 0.05 dB, |SSIM|, |HaarPSI| <= 0.001 count as level): a description, not a test.",
             'The best protocol is picked as the highest PSNR margin of one seed, which favours a lucky seed.', '']
    if seeds:
        f = {'psnr': '{:.3f} dB', 'ssim': '{:.4f}', 'haarpsi': '{:.4f}'}
        lines += ['What the seeds resolve here, from the settings run with several seeds (detectable difference = 95% half-width, '
                  'then the MDE at 80% power): ' + '; '.join(
                      f"{g['task']} {g['network']} {g['loss']} ({len(g['seeds'])} seeds): " + ', '.join(
                          f"{m} {f[m].format(p['half_width'])} / {f[m].format(p['mde'])}" for m, p in
                          ((m, g['paired'][m]['detectable']) for m in METRICS if m in g['paired']) if p['half_width'] is not None)
                      for g in seeds) +
                  (f". Pooled over them: " + ', '.join(f"{m} {f[m].format(d['half_width'])} / {f[m].format(d['mde'])}" for m, d in detect.items())
                   if detect and len(seeds) > 1 else '') +
                  '. The seed-to-seed SD differs a lot between tasks; a one-seed margin smaller than its task\'s detectable '
                  'difference could not be told from seed noise even with three seeds.', '']
    lines += ['## Best protocol of each MDF loss', '',
              '| task | network | MDF loss | used as | best protocol | run | lr | PSNR (dB) | SSIM | HaarPSI | verdict (paired by seed) | direction at one seed (not a test) |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in bests:
        lines.append(f"| {r['task']} | {r['network']} | {r['loss']} | {r['kind']} | {r['setting']} | `{r['run']}` | {r['lr']:g} | "
                     f"{cell(r, 'psnr')} | {cell(r, 'ssim')} | {cell(r, 'haarpsi')} | {paired_text(r, seeds)} | {direction(r['mean'])} |")
    lines += ['', '## Every MDF run', '', '| task | network | MDF loss | protocol | run | lr | PSNR (dB) | SSIM | HaarPSI |',
              '|---|---|---|---|---|---|---|---|---|']
    for r in sorted(rows, key=lambda r: (r['task'], r['network'], r['loss'], -r['mean']['psnr'])):
        lines.append(f"| {r['task']} | {r['network']} | {r['loss']} | {r['setting']} | `{r['run']}` | {r['lr']:g} | "
                     f"{cell(r, 'psnr')} | {cell(r, 'ssim')} | {cell(r, 'haarpsi')} |")
    if seeds:
        lines += ['', '## Across seeds', '', 'Mean margin over the test sets for each seed (in brackets); then, paired by seed, the mean',
                  'with its 95% interval, the verdict, and the detectable difference (half-width) / MDE at 80% power.', '',
                  '| task | network | MDF loss | protocol | run | seeds | PSNR (dB) | SSIM | HaarPSI |', '|---|---|---|---|---|---|---|---|---|']
        for g in seeds:
            cells = []
            for m in METRICS:
                if m not in g['summary']: cells.append('n/a'); continue
                f, p = fmt[m], g['paired'][m]
                per = ', '.join(f.format(g['per_seed'][str(s)][m]) for s in g['seeds'])
                det = p['detectable']
                cells.append(f"{stats.interval_text(p, f)} **{p['verdict']}** [{per}]; detectable {f.format(det['half_width'])[1:]} / "
                             f"{f.format(det['mde'])[1:]}")
            lines.append(f"| {g['task']} | {g['network']} | {g['loss']} | {g['protocol']}{', lr tuned' if g['tuned'] else ''} | "
                         f"`{g['run']}` | {', '.join(map(str, g['seeds']))} | " + ' | '.join(cells) + ' |')
    lines += ['', '## Commands', '']
    for c in sorted({(r['source'], r['command']) for r in rows}):
        lines.append(f'- `{Path(c[0]).name}`: `{c[1]}`')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('results', nargs='+', help='results.json files written by mdf-loss experiment')
    ap.add_argument('--out', help='write OUT.json and OUT.md')
    args = ap.parse_args(argv)
    missing = [p for p in args.results if not Path(p).is_file()]
    if missing: ap.error(f"no such results file: {', '.join(missing)}")
    rows = collect(args.results)
    if not rows: ap.error('no MDF run with an L1 run beside it in these files')
    groups = across_seeds(rows)
    attach_paired(rows, groups)
    report = {'command': 'python benchmarks/mdf_verdict.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
              'rule': 'paired by seed: per-seed margins (MDF minus the L1 run of the same seed, averaged over the test sets); '
                      'mean with a 95% Student-t interval over the seeds; win when it lies above 0, loss when below, tie when '
                      'it contains 0 or when there is one seed (no interval). Detectable: t(0.975, n-1) * sd / sqrt(n); MDE '
                      '(t(0.975, n-1) + t(0.80, n-1)) * sd / sqrt(n), 80% power (benchmarks/stats.py).',
              't_quantiles': stats.T_SOURCE, 'detectable': study_detectable(groups),
              'best': best(rows), 'across_seeds': groups, 'runs': rows}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).with_suffix('.json').write_text(text + '\n')
        Path(args.out).with_suffix('.md').write_text(markdown(rows, report['best'], report['command'], report['across_seeds'],
                                                              report['detectable']))


if __name__ == '__main__':
    main()
