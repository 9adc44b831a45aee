"""The package as users get it: build the wheel, install it with only the core requirements into a fresh virtual
environment, and use every bundled loss there, away from the source tree; the torch.hub entries of a checkout."""
import hashlib, shutil, subprocess, sys, textwrap, venv, zipfile

import pytest
import torch

from conftest import ROOT

SOURCES = ('setup.py', 'settings.ini', 'pyproject.toml', 'README.md', 'LICENSE')
CORE = {'torch', 'numpy', 'pillow', 'safetensors'}
OPTIONAL = ('tqdm', 'matplotlib', 'ipywidgets', 'torchmetrics')

SCRIPT = textwrap.dedent('''
    import importlib.util, sys, torch, mdf_loss
    from mdf_loss import MDFLoss
    assert 'site-packages' in mdf_loss.__file__, mdf_loss.__file__
    missing = [m for m in %r if importlib.util.find_spec(m) is None]
    print('absent:', ' '.join(missing))
    names = MDFLoss.available()
    assert {'official-sisr', 'official-denoise', 'official-jpeg'} <= set(names), names
    x, y = torch.rand(1, 3, 24, 24, requires_grad=True), torch.rand(1, 3, 24, 24)
    for n in names:
        v = MDFLoss.from_pretrained(n)(x, y)
        v.backward()
        assert v.item() > 0 and x.grad.abs().sum() > 0, (n, v)
        x.grad = None
        print(n, v.item())
    from mdf_loss.core import bundled_image_path, load_image
    assert load_image(bundled_image_path()).shape == (1, 3, 400, 512)
    try: import mdf_loss.widgets
    except ImportError as e: print('widgets:', e)
''' % (OPTIONAL,))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    "Built from a copy of what the wheel is made of, so that stale files in a checkout's build/ cannot slip in."
    src, dist = tmp_path_factory.mktemp('src'), tmp_path_factory.mktemp('dist')
    for name in SOURCES: shutil.copy2(ROOT/name, src/name)
    shutil.copytree(ROOT/'mdf_loss', src/'mdf_loss', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), str(src)],
                   check=True, capture_output=True)
    return next(dist.glob('mdf_loss-*.whl'))


def test_wheel_contents(wheel):
    "LICENSE and py.typed ship; no asset is shipped twice (official-denoise is an alias of official-sisr)."
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert any(n.endswith('.dist-info/licenses/LICENSE') or n.endswith('.dist-info/LICENSE') for n in names), names
        assert 'mdf_loss/py.typed' in names
        assets = {n: hashlib.sha256(z.read(n)).hexdigest() for n in names if n.startswith('mdf_loss/assets/')}
        modules = {n for n in names if n.endswith('.py')}
        meta = z.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    assert 'mdf_loss/assets/official-sisr.safetensors' in assets and 'mdf_loss/assets/coffee.png' in assets
    assert len(set(assets.values())) == len(assets), 'two assets have the same bytes'
    official = {n.rsplit('/', 1)[1] for n in assets if n.rsplit('/', 1)[1].startswith('official-')}
    assert official == {'official-sisr.safetensors', 'official-jpeg.safetensors'}, official  # official-denoise: an alias
    expected = {f'mdf_loss/{p.relative_to(ROOT/"mdf_loss")}' for p in (ROOT/'mdf_loss').rglob('*.py')}
    assert modules == expected, modules ^ expected
    required = {l.split(':', 1)[1].strip() for l in meta.splitlines() if l.startswith('Requires-Dist:') and 'extra ==' not in l}
    assert {r.split('>')[0].split('=')[0].split('<')[0].strip().lower() for r in required} == CORE, required
    extras = {l.split(':', 1)[1].strip() for l in meta.splitlines() if l.startswith('Provides-Extra:')}
    assert {'widgets', 'experiments', 'docs', 'dev', 'all'} <= extras, extras


def test_core_install_runs_the_loss(wheel, tmp_path):
    "With only torch, numpy, pillow and safetensors: every bundled loss runs forward and backward; the widgets say which extra they need."
    env_dir = tmp_path / 'env'
    venv.create(env_dir, with_pip=True)
    py = env_dir / 'bin' / 'python'
    r = subprocess.run([str(py), '-m', 'pip', 'install', '-q', 'torch==2.13.0', str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([str(py), '-c', SCRIPT], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert 'absent: ' + ' '.join(OPTIONAL) in out, out   # the core install really lacks every optional package
    assert 'official-jpeg' in out
    widget_error = next(l for l in out.splitlines() if l.startswith('widgets:'))
    assert "pip install 'mdf-loss[widgets]'" in widget_error, widget_error
    exe = str(env_dir / 'bin' / 'mdf-loss')
    r = subprocess.run([exe, '--help'], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and 'convert-official' in r.stdout
    # phase 1 needs nothing optional (progress falls back to plain lines without tqdm) ...
    r = subprocess.run([exe, 'train', '--task', 'denoise', '--max-size', '36', '--iters', '2', '--out', 'run', '--threads', '1'],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / 'run' / 'loss.safetensors').is_file() and 'phase 1 (denoise): 2/2' in r.stderr
    # ... the experiments say, in one line, which extra they need
    r = subprocess.run([exe, 'demo', '--out', 'demo'], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and "pip install 'mdf-loss[experiments]'" in r.stderr, r.stderr


def test_torch_hub_local():
    "`torch.hub.load(checkout, 'mdf_official_sisr', source='local')` gives the same loss as `from_pretrained`."
    from mdf_loss import MDFLoss
    hub = torch.hub.load(str(ROOT), 'mdf_official_sisr', source='local')
    x, y = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    assert isinstance(hub, MDFLoss)
    assert torch.equal(hub(x, y), MDFLoss.from_pretrained('official-sisr')(x, y))
    for name in MDFLoss.available():
        entry = 'mdf_' + name.replace('-', '_')
        assert torch.hub.load(str(ROOT), entry, source='local', reduction='none')(x, y).shape == (1,), entry
