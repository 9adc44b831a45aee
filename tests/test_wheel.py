"""Build the wheel, install it into a fresh virtual environment, and use every bundled loss there, away from the source tree."""
import subprocess
import sys
import textwrap
import venv


from conftest import ROOT

SCRIPT = textwrap.dedent('''
    import sys, torch, mdf_loss
    from mdf_loss import MDFLoss
    assert 'site-packages' in mdf_loss.__file__, mdf_loss.__file__
    names = MDFLoss.available()
    assert {'official-sisr', 'official-denoise', 'official-jpeg'} <= set(names), names
    x, y = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 24, 24)
    for n in names:
        v = MDFLoss.from_pretrained(n)(x, y).item()
        assert v > 0, (n, v)
        print(n, v)
    from mdf_loss.core import bundled_image_path, load_image
    assert load_image(bundled_image_path()).shape == (1, 3, 400, 512)
''')



def test_wheel_installs_and_runs(tmp_path):
    dist = tmp_path / 'dist'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(dist.glob('mdf_loss-*.whl'))
    env_dir = tmp_path / 'env'
    venv.create(env_dir, with_pip=True)
    py = env_dir / 'bin' / 'python'
    r = subprocess.run([str(py), '-m', 'pip', 'install', '-q', 'torch==2.13.0', str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([str(py), '-c', SCRIPT], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'official-jpeg' in r.stdout
    r = subprocess.run([str(env_dir / 'bin' / 'mdf-loss'), '--help'], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and 'convert-official' in r.stdout
