"""The `mdf-loss` console script, run as a user runs it: a subprocess, exit codes, files written."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdf_loss import MDFLoss

EXE = shutil.which('mdf-loss') or str(Path(sys.executable).parent / 'mdf-loss')


def run(*args, cwd=None):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_demo_writes_figure_and_table(tmp_path):
    r = run('demo', '--steps', '3', '--size', '32', '--train-iters', '3', '--out', tmp_path / 'out')
    assert r.returncode == 0, r.stderr
    out = tmp_path / 'out'
    assert {p.name for p in out.iterdir()} == {'demo.png', 'results.md', 'results.json', 'phase1'}
    assert MDFLoss.load(out / 'phase1' / 'loss.safetensors').meta['task'] == 'denoise'
    res = json.loads((out / 'results.json').read_text())['results']
    assert set(res) == {'MDF (ours, quick denoise)', 'MDF (official SISR)', 'L2'}
    for r_ in res.values():
        assert len(r_['psnr_curve']) == 4 and r_['psnr_curve'][-1] > r_['psnr_curve'][0]
    assert 'wrote' in r.stdout and 'demo.png' in r.stdout
    from PIL import Image
    assert Image.open(out / 'demo.png').size[0] > 600


@pytest.mark.parametrize('args,message', [
    (('demo', '--steps', 'x'), "invalid int value: 'x'"),
    (('demo', '--steps', '0'), '--steps must be at least 1'),
    (('convert-official', 'nope.pth', 'o.safetensors'), 'nope.pth does not exist'),
    (('convert-official',), 'the following arguments are required'),
    (('unknown-command',), 'invalid choice'),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_debug_shows_traceback(tmp_path):
    r = run('--debug', 'convert-official', 'nope.pth', 'o.safetensors', cwd=tmp_path)
    assert r.returncode != 0 and 'Traceback' in r.stderr


def test_every_command_has_help():
    for cmd in ('demo', 'convert-official', 'train', 'experiment'):
        r = run(cmd, '--help'); assert r.returncode == 0 and 'usage: mdf-loss' in r.stdout


def test_convert_official_matches_bundled(tmp_path, data_dir):
    r = run('convert-official', data_dir / 'mdf_official' / 'Ds_JPEG.pth', tmp_path / 'j.safetensors', '--task', 'jpeg')
    assert r.returncode == 0, r.stderr
    ours, bundled = MDFLoss.load(tmp_path / 'j.safetensors'), MDFLoss.from_pretrained('official-jpeg')
    for k, v in bundled.state_dict().items(): assert torch.equal(ours.state_dict()[k], v), k
    assert ours.meta['task'] == 'jpeg'


def test_convert_refuses_malicious_pickle(tmp_path):
    import pickle
    marker = tmp_path / 'pwned'
    class Evil:
        def __reduce__(self): return (subprocess.call, (['touch', str(marker)],))
    with open(tmp_path / 'evil.pth', 'wb') as f:
        for part in (0x1950a86a20f9469cfc6c, 1001, {'little_endian': True}, [Evil()], []): pickle.dump(part, f, protocol=2)
    r = run('convert-official', tmp_path / 'evil.pth', tmp_path / 'o.safetensors')
    # protocol 2 records subprocess.call under its Python 2 name, commands.call
    assert r.returncode == 2 and "refused to load global 'commands.call'" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / 'o.safetensors').exists()
