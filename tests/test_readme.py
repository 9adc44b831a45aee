"""README.md is generated from nbs/index.ipynb; this checks that they agree, that the README stays a front page, and
that its commands are the ones CI runs."""
import re
import subprocess
import sys

from conftest import ROOT


def test_readme_matches_index():
    out = subprocess.run([sys.executable, str(ROOT/'.ci'/'readme.py'), '--stdout'], capture_output=True, text=True, check=True).stdout
    assert out == (ROOT/'README.md').read_text(), 'README.md is stale: run `bash .ci/readme` and commit'


def test_readme_is_a_front_page():
    readme = (ROOT/'README.md').read_text()
    assert len(readme.splitlines()) <= 150
    headings = re.findall(r'^## (.*)$', readme, re.M)
    assert headings[:2] == ['Install and run', 'Quickstart'], headings


def test_readme_has_the_set_up_commands():
    readme = (ROOT/'README.md').read_text()
    commands = [c for c in re.findall(r'```sh\n(.*?)\n```', readme, re.S) if c.startswith('python3 -m venv')]
    assert len(commands) == 3, commands   # the main job, the tests, then the documentation site
    demo, tests, docs = commands
    assert demo.endswith('mdf-loss demo') and 'pip install torch==2.13.0 -e ".[experiments]"' in demo
    assert tests.endswith('pytest') and 'pip install torch==2.13.0 -e ".[dev]"' in tests
    assert docs.endswith('bash .ci/docs') and 'pip install torch==2.13.0 -e ".[docs]"' in docs
    ci = (ROOT/'.ci'/'run').read_text()
    # CI builds the site from the docs extra alone, then adds the dev extra and runs the tests
    steps = [ci.index(s) for s in ('pip install torch==2.13.0 -e ".[docs]"', 'bash .ci/docs',
                                   'pip install torch==2.13.0 -e ".[dev]"', '\npytest')]
    assert steps == sorted(steps), 'CI must build the docs from the docs extra before installing the dev extra'
