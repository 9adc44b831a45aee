"""Every page shows what its code produces now.

Each notebook is saved executed, with a record of the tracked files it read (recorded results in benchmarks/results,
shipped assets) and their sha256 (`.ci/execute_nbs.py` writes it; `mdf_loss.checkout` is the guard). These tests fail,
naming the notebook to re-execute, when one of those files has changed since; and they re-run the cheap cells that
only show recorded results (flagged `#| recorded`) and compare the text they show with the saved text.
"""
import json
import shutil

import pytest

from conftest import ROOT
from mdf_loss.checkout import METADATA_KEY, RECORDED_FLAG, rerun_recorded, stale_reads

NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
IDS = [str(p.relative_to(ROOT/'nbs')) for p in NBS]


def cells(nb):
    return json.loads(nb.read_text())['cells']


def source(cell) -> str:
    return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']


def has_recorded_cells(nb) -> bool:
    return any(c['cell_type'] == 'code' and RECORDED_FLAG.search(source(c)) for c in cells(nb))


def record(nb) -> dict:
    return json.loads(nb.read_text())['metadata'].get(METADATA_KEY, {}).get('read', {})


@pytest.mark.parametrize('nb', NBS, ids=IDS)
def test_page_was_run_against_the_files_it_shows(nb):
    rel = nb.relative_to(ROOT)
    stale = stale_reads(nb, root=ROOT)
    assert stale is not None, f'{rel} holds no record of what it read: re-execute it with `python .ci/execute_nbs.py {rel}`'
    assert not stale, f'{rel} shows files that changed since it ran {stale}: re-execute it with `python .ci/execute_nbs.py {rel}`'


@pytest.mark.parametrize('nb', [p for p in NBS if has_recorded_cells(p)],
                         ids=[i for p, i in zip(NBS, IDS) if has_recorded_cells(p)])
def test_recorded_cells_show_what_the_files_hold(nb):
    differ = rerun_recorded(nb, root=ROOT)
    rel = nb.relative_to(ROOT)
    assert not differ, (f'{rel}: the recorded cells {[i for i, _, _ in differ]} now show other text; re-execute it with '
                        f'`python .ci/execute_nbs.py {rel}`. First difference:\n--- saved\n{differ[0][1]}\n--- now\n{differ[0][2]}')


def test_pages_that_show_results_are_guarded():
    "The pages that read recorded results have cells the guard re-runs, and some page reads every kind of tracked file."
    readers = [nb for nb in NBS if any(k.startswith('benchmarks/results/') for k in record(nb))]
    assert readers, 'no page read a recorded result'
    for nb in readers: assert has_recorded_cells(nb), f'{nb.relative_to(ROOT)} reads recorded results but flags no cell `#| recorded`'
    assert any(k.startswith('mdf_loss/assets/') for nb in NBS for k in record(nb))


def perturbed(value):
    "The same JSON with every float scaled, so that any number a page prints from it changes."
    if isinstance(value, float): return value*1.37 + 0.011
    if isinstance(value, dict): return {k: perturbed(v) for k, v in value.items()}
    if isinstance(value, list): return [perturbed(v) for v in value]
    return value


@pytest.fixture
def page_copy(tmp_path):
    "A copy of one page that shows recorded results and reads a shipped asset, with the tracked files it read."
    nb = next(nb for nb in NBS if has_recorded_cells(nb) and any(k.startswith('mdf_loss/assets/') for k in record(nb))
              and any(k.endswith('.json') for k in record(nb)))
    for key in record(nb):
        (tmp_path/key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT/key, tmp_path/key)
    copy = tmp_path/nb.relative_to(ROOT)
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(nb, copy)
    for extra in nb.parent.glob('*.py'): shutil.copyfile(extra, copy.parent/extra.name)  # modules a tutorial imports
    return tmp_path, copy


def test_guard_fails_when_a_result_file_changes(page_copy):
    root, nb = page_copy
    assert stale_reads(nb, root=root) == {} and rerun_recorded(nb, root=root) == []
    result = next(k for k in record(nb) if k.endswith('.json'))
    (root/result).write_text(json.dumps(perturbed(json.loads((root/result).read_text()))))
    assert stale_reads(nb, root=root) == {result: 'changed'}
    for key in record(nb):  # every result the page shows, perturbed: its recorded cells now print other numbers
        if key.endswith('.json'): (root/key).write_text(json.dumps(perturbed(json.loads((root/key).read_text()))))
    assert rerun_recorded(nb, root=root), 'the recorded cells printed the same text from different numbers'


def test_guard_fails_when_a_shipped_asset_changes(page_copy):
    root, nb = page_copy
    asset = next(k for k in record(nb) if k.startswith('mdf_loss/assets/'))
    with open(root/asset, 'ab') as f: f.write(b'\0')
    assert stale_reads(nb, root=root) == {asset: 'changed'}
    (root/asset).unlink()
    assert stale_reads(nb, root=root) == {asset: 'missing'}
