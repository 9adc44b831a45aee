"""Run notebooks in place and keep their outputs, as a reader's run would leave them, skipping the long cells.

Usage: python .ci/execute_nbs.py nbs/05_loss.ipynb [more.ipynb ...]

Each notebook runs top to bottom in a fresh IPython shell (execnb, the runner nbdev uses), from its own folder, with
the cells flagged by settings.ini's `tst_flags` (`#| slow`, `#| cuda`, `#| notest`) left unrun and their old outputs
dropped. Stops at the first cell that raises and leaves that notebook untouched. The tracked files the run read (the
recorded results and shipped assets, see `mdf_loss.checkout`) are stamped, with their sha256, into the notebook's
metadata, so that the test suite notices when one of them changes. Then `nbdev_clean` normalises it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
cfg = ConfigParser(); cfg.read(ROOT/'settings.ini')
SKIP = set(cfg['DEFAULT']['tst_flags'].split())


def flagged(cell) -> bool:
    "Whether a code cell carries one of the skipped flags (`#| slow` and the like)."
    return any(re.match(rf'^\s*#\s*\|\s*({"|".join(SKIP)})\s*$', line) for line in cell.source.splitlines())


def run(path: Path) -> float:
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from mdf_loss.checkout import forget_reads, reads, stamp
    nb = read_nb(path)
    forget_reads()
    cwd = os.getcwd(); os.chdir(path.parent)
    t0 = time.perf_counter()
    try:
        for c in nb.cells:
            if c.cell_type == 'code' and flagged(c): c.outputs = []
        CaptureShell().run_all(nb, exc_stop=True, preproc=lambda c: c.cell_type == 'code' and flagged(c))
    finally: os.chdir(cwd)
    stamp(nb, reads())
    write_nb(nb, path)
    subprocess.run([str(Path(sys.executable).parent/'nbdev_clean'), '--fname', str(path)], cwd=ROOT, check=True)
    return time.perf_counter() - t0


if __name__ == '__main__':
    for p in sys.argv[1:]:
        print(f'{p}: ran in {run(Path(p).resolve()):.0f} s', flush=True)
