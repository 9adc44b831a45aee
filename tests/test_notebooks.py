"""One test per notebook: runs its cells with nbdev's own runner, skipping the cells flagged in settings.ini."""
import os
from configparser import ConfigParser

import pytest

from conftest import ROOT

NBS = sorted(p for p in (ROOT / 'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
cfg = ConfigParser(); cfg.read(ROOT / 'settings.ini')
SKIP_FLAGS = cfg['DEFAULT']['tst_flags'].split()
FORCE_FLAGS = os.environ.get('MDF_LOSS_TEST_FLAGS', '').split()   # e.g. "slow" to run the long cells too


@pytest.mark.parametrize('nb', NBS, ids=[str(p.relative_to(ROOT / 'nbs')) for p in NBS])
def test_notebook(nb):
    from nbdev.test import test_nb
    ok, secs = test_nb(nb, skip_flags=SKIP_FLAGS, force_flags=FORCE_FLAGS, showerr=True, basepath=ROOT)
    assert ok, f'{nb.name} failed after {secs:.0f} s (traceback above)'


def test_found_notebooks():
    names = {p.name for p in NBS}
    assert {'00_core.ipynb', '01_blocks.ipynb', '04_weights.ipynb', '05_loss.ipynb', 'index.ipynb'} <= names
