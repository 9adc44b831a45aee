"""README.md is generated from nbs/index.ipynb; this checks that they agree and that its two commands are the ones CI runs."""
import re
import subprocess
import sys

from conftest import ROOT


def test_readme_matches_index():
    out = subprocess.run([sys.executable, '-m', 'jupyter', 'nbconvert', '--to', 'markdown', '--log-level=ERROR', '--stdout',
                          str(ROOT / 'nbs' / 'index.ipynb')], capture_output=True, text=True, check=True).stdout
    assert out == (ROOT / 'README.md').read_text(), 'README.md is stale: run `bash .ci/readme` and commit'


def test_readme_has_the_two_commands():
    readme = (ROOT / 'README.md').read_text()
    commands = [c for c in re.findall(r'```sh\n(.*?)\n```', readme, re.S) if c.startswith('python3 -m venv')]
    assert len(commands) == 2, commands   # exactly two set-up-to-result commands: the main job and the tests
    demo, tests = commands
    assert demo.endswith('mdf-loss demo') and 'pip install torch==2.13.0 -e ".[experiments]"' in demo
    assert tests.endswith('pytest') and '-e ".[dev]"' in tests
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'pytest' in ci and 'pip install torch==2.13.0 -e ".[dev]"' in ci and 'bash .ci/docs' in ci
    assert 'bash .ci/docs' in readme   # the docs command comes after the two
