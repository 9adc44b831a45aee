"""Shared test fixtures and helpers: where the repository and the shared data folder are, the `mdf-loss` executable and
the benchmark scripts run as a user runs them, one torch thread for small work, hand-made legacy pickles, restored
registries, and the browser pieces (system Chromium driven by Playwright, the built documentation site served from
127.0.0.1)."""
import functools, http.server, importlib.util, io, json, os, pickle, shutil, subprocess, sys, threading
from pathlib import Path

import pytest
import torch

from mdf_loss.runtime import data_dir as find_data
from mdf_loss.weights import LEGACY_MAGIC, LEGACY_PROTOCOL

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = (os.environ.get('MDF_LOSS_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
            or '/usr/bin/chromium')  # Debian's; the skip message names it when none is found
CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                  '--disable-sync', '--no-first-run']
SITE = ROOT/'_docs'  # what `bash .ci/docs` builds
BENCH = ROOT/'benchmarks'
EXE = shutil.which('mdf-loss', path=str(Path(sys.executable).parent)) or shutil.which('mdf-loss')  # this environment's
QUIET = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}  # one thread; no warnings in the output
DOCS_MODULES = ('sphinx', 'myst_nb', 'furo', 'nbdev', 'sphinx-mathjax-offline')


@pytest.fixture(scope="session")
def data_dir() -> Path:
    "The shared data folder; the test is skipped, with the reason shown, where it is absent."
    p = find_data()
    if p is None: pytest.skip('shared data folder not found: set MDF_LOSS_DATA to run this test')
    return p


def run_cli(*args, cwd=None, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    "Run this environment's `mdf-loss` console script with `args`, as a user would; output captured as text."
    assert EXE, 'the mdf-loss console script is not installed: pip install -e .'
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def run_benchmark(script: str, *args, timeout: int = 300) -> dict:
    "Run `benchmarks/<script>` with `args` in a subprocess (one thread, warnings off); returns the JSON it prints."
    r = subprocess.run([sys.executable, str(BENCH/script), *args], capture_output=True, text=True, timeout=timeout, env=QUIET)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def legacy_pickle(obj, keys=None, magic=LEGACY_MAGIC, protocol=LEGACY_PROTOCOL, sys_info=None, pickle_protocol=2) -> bytes:
    "A legacy torch.save layout (magic, protocol, system info, object, storage keys) around `obj`, written by hand."
    buf = io.BytesIO()
    for part in (magic, protocol, sys_info or {'little_endian': True}, obj, [] if keys is None else keys):
        pickle.dump(part, buf, protocol=pickle_protocol)
    return buf.getvalue()


class Marker:
    "Pickles to a call that would create `path` if anything ran it."
    def __init__(self, call, path): self.call, self.path = call, path
    def __reduce__(self):
        if self.call == 'os.system': return (os.system, (f'touch {self.path}',))
        if self.call == 'subprocess': return (subprocess.call, (['touch', str(self.path)],))
        if self.call == 'eval': return (eval, (f"open({str(self.path)!r}, 'w').close()",))
        if self.call == 'exec': return (exec, (f"open({str(self.path)!r}, 'w').close()",))
        if self.call == 'builtins.open': return (open, (str(self.path), 'w'))
        if self.call == 'torch.load': return (torch.load, (str(self.path),))
        if self.call == 'getattr': return (getattr, (str(self.path), 'upper'))
        raise ValueError(self.call)


@pytest.fixture
def restore_registries():
    "Put the task and loss registries back as they were after a test that registers its own."
    from mdf_loss import baselines, tasks
    saved_tasks, saved_losses = dict(tasks._REGISTRY), dict(baselines.LOSSES)
    yield
    tasks._REGISTRY.clear(); tasks._REGISTRY.update(saved_tasks)
    baselines.LOSSES.clear(); baselines.LOSSES.update(saved_losses)


@pytest.fixture
def one_thread():
    "Small convolutions gain nothing from a second thread, and on a shared machine two spinning OpenMP threads can be 100x slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def chromium_or_skip(what: str):
    "Skip the test `what`, saying why, without Chromium or Playwright. No browser is ever downloaded."
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f'{what} skipped: no Chromium at {CHROMIUM}; install it with `apt-get install chromium` '
                    '(or set MDF_LOSS_CHROMIUM to a Chromium binary)')
    if importlib.util.find_spec('playwright') is None:
        pytest.skip(f'{what} skipped: playwright is not installed (pip install -e ".[dev]")')


@pytest.fixture(scope='module')
def browser():
    """One headless system Chromium for the browser tests of a module. Not one per session: while Playwright's sync API
    is open, the main thread has a running asyncio loop, and the widgets (which run their jobs in the background where
    a loop runs, as in a live kernel) would take every later test for a live kernel."""
    chromium_or_skip('browser test')
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try: yield b
        finally: b.close()


def built_site() -> Path:
    "The documentation site, built with `bash .ci/docs` if _docs/index.html is missing (that needs the docs extra)."
    if not (SITE/'index.html').is_file():
        missing = [m for m in DOCS_MODULES if importlib.util.find_spec(m) is None]
        if missing: pytest.skip(f'docs site test skipped: _docs/ is not built and the docs packages are missing '
                                f'({", ".join(missing)}): pip install -e ".[docs]"')
        r = subprocess.run(['bash', str(ROOT/'.ci'/'docs')], cwd=ROOT, capture_output=True, text=True, timeout=900,
                           env={**os.environ, 'PYTHON': sys.executable})
        if r.returncode: pytest.fail(f'`bash .ci/docs` failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}')
    return SITE


@pytest.fixture(scope='session')
def site_url():
    "The built site, served from 127.0.0.1 on a free port for the whole session."
    chromium_or_skip('docs site test')
    site = built_site()
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass  # quiet: failed requests are caught in the browser
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{server.server_address[1]}'
    finally: server.shutdown(); server.server_close()
