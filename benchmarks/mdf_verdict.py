"""Where MDF wins and where it loses: the best training protocol for each MDF loss, per task, and its margin against L1.

Reads the `results.json` files that `mdf-loss experiment` wrote (one or more per task: plain, `--protocol finetune
--sweep`, `--lr-grid ...`) and compares every MDF run with the L1 run of the same file, network and protocol, that
is with the same steps, seeds and data. Margins are averaged over the test sets (and JPEG qualities); the range
over them is given too. The best protocol of an MDF loss is the one with the highest mean PSNR margin, found
separately for MDF as the main loss (alone, from scratch or fine-tuning) and for L1 + w * MDF (where a tiny w makes
the run nearly L1).

    python benchmarks/mdf_verdict.py benchmarks/results/restoration_*.json --out benchmarks/results/mdf_verdict

prints JSON and writes OUT.json and OUT.md.
"""
import argparse
import json
import sys
from pathlib import Path

METRICS = ('psnr', 'ssim', 'haarpsi')
TIES = {'psnr': 0.05, 'ssim': 0.001, 'haarpsi': 0.001}  # as the experiment's own tables


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
        out.append({'task': task, 'network': network, 'loss': loss, 'run': run, 'protocol': protocol, 'tuned': tuned,
                    'seeds': sorted(by_seed), 'per_seed': {str(k): v for k, v in sorted(by_seed.items())}, 'summary': summary})
    return out


def verdict(margin: dict) -> str:
    words = []
    for m in METRICS:
        v = margin.get(m)
        if v is None: continue
        words.append(f"{m} {'wins' if v > TIES[m] else 'loses' if v < -TIES[m] else 'ties'}")
    return ', '.join(words)


def best(rows):
    "Per (task, network, MDF loss, kind): the row with the highest mean PSNR margin; kind is MDF alone or L1 + w*MDF."
    top = {}
    for r in rows:
        k = (r['task'], r['network'], r['loss'], r['kind'])
        if k not in top or r['mean']['psnr'] > top[k]['mean']['psnr']: top[k] = r
    return [top[k] for k in sorted(top)]


def markdown(rows, bests, command: str = '', seeds=()) -> str:
    fmt = {'psnr': '{:+.2f}', 'ssim': '{:+.4f}', 'haarpsi': '{:+.4f}'}
    def cell(r, m):
        if m not in r['mean']: return 'n/a'
        lo, hi = r['range'][m]
        return f"{fmt[m].format(r['mean'][m])} ({fmt[m].format(lo)} to {fmt[m].format(hi)})"
    lines = ['# MDF against L1: the best protocol per task', '', f'Made by `{command}`.', '',
             'Margins are MDF minus L1, trained with the same steps, seeds and data (same results file, network and',
             'protocol), averaged over the test sets; the range over the sets is in brackets. Ties: |PSNR| <= 0.05 dB,',
             '|SSIM|, |HaarPSI| <= 0.001.', '',
             '## Best protocol of each MDF loss', '',
             '| task | network | MDF loss | used as | best protocol | run | lr | PSNR (dB) | SSIM | HaarPSI | verdict |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in bests:
        lines.append(f"| {r['task']} | {r['network']} | {r['loss']} | {r['kind']} | {r['setting']} | `{r['run']}` | {r['lr']:g} | "
                     f"{cell(r, 'psnr')} | {cell(r, 'ssim')} | {cell(r, 'haarpsi')} | {verdict(r['mean'])} |")
    lines += ['', '## Every MDF run', '', '| task | network | MDF loss | protocol | run | lr | PSNR (dB) | SSIM | HaarPSI |',
              '|---|---|---|---|---|---|---|---|---|']
    for r in sorted(rows, key=lambda r: (r['task'], r['network'], r['loss'], -r['mean']['psnr'])):
        lines.append(f"| {r['task']} | {r['network']} | {r['loss']} | {r['setting']} | `{r['run']}` | {r['lr']:g} | "
                     f"{cell(r, 'psnr')} | {cell(r, 'ssim')} | {cell(r, 'haarpsi')} |")
    if seeds:
        lines += ['', '## Across seeds', '', 'Mean margin over the test sets for each seed; then the mean and the range over seeds.', '',
                  '| task | network | MDF loss | protocol | run | seeds | PSNR (dB) | SSIM | HaarPSI |', '|---|---|---|---|---|---|---|---|---|']
        for g in seeds:
            cells = []
            for m in METRICS:
                if m not in g['summary']: cells.append('n/a'); continue
                f, v = fmt[m], g['summary'][m]
                per = ', '.join(f.format(g['per_seed'][str(s)][m]) for s in g['seeds'])
                cells.append(f"{f.format(v['mean'])} ({per})")
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
    report = {'command': 'python benchmarks/mdf_verdict.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
              'best': best(rows), 'across_seeds': across_seeds(rows), 'runs': rows}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).with_suffix('.json').write_text(text + '\n')
        Path(args.out).with_suffix('.md').write_text(markdown(rows, report['best'], report['command'], report['across_seeds']))


if __name__ == '__main__':
    main()
