"""End to end in a real browser: JupyterLab serves the widgets tutorial, headless Chromium (driven by Playwright) runs
all its cells, moves the explorer's strength slider with the keyboard, and checks that the loss and the picture follow.

Needs Debian's `chromium` (apt-get install chromium) and the dev extras (jupyterlab, ipywidgets, playwright). No browser
is downloaded: Playwright drives the system Chromium through `executable_path`. Without Chromium the test skips and
says why. Screenshots and the JupyterLab log go to test-artifacts/browser/.
"""
import json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

from conftest import ROOT

CHROMIUM = os.environ.get('MDF_LOSS_CHROMIUM', '/usr/bin/chromium')
CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                  '--disable-sync', '--no-first-run']
TUTORIAL = ROOT/'nbs'/'tutorials'/'what_the_loss_sees.ipynb'
ARTIFACTS = ROOT/'test-artifacts'/'browser'
TOKEN = 'mdf-loss-browser-test'
RUN_TIMEOUT = 150  # seconds for the whole tutorial to run in the browser's kernel


def requirements_or_skip():
    "Skip, saying what is missing, unless Chromium, Playwright and JupyterLab are all here."
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f'browser test skipped: no Chromium at {CHROMIUM}; install it with `apt-get install chromium` '
                    '(or set MDF_LOSS_CHROMIUM to a Chromium binary)')
    for module, package in (('playwright.sync_api', 'playwright'), ('jupyterlab', 'jupyterlab'), ('ipywidgets', 'ipywidgets')):
        try: __import__(module)
        except ImportError: pytest.skip(f'browser test skipped: {package} is not installed (pip install -e ".[dev]")')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def write_lab_settings(settings: Path):
    "User settings for a quiet, deterministic JupyterLab: no news or update toasts."
    (settings/'@jupyterlab'/'apputils-extension').mkdir(parents=True)
    (settings/'@jupyterlab'/'apputils-extension'/'notification.jupyterlab-settings').write_text(
        json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "A JupyterLab server on 127.0.0.1 serving a copy of the tutorial; yields (base URL, notebook name)."
    requirements_or_skip()
    shutil.rmtree(ARTIFACTS, ignore_errors=True); ARTIFACTS.mkdir(parents=True)
    home = tmp_path_factory.mktemp('lab')
    root, settings = home/'root', home/'settings'
    root.mkdir(); write_lab_settings(settings)
    shutil.copy(TUTORIAL, root/TUTORIAL.name)  # a copy: JupyterLab may save the notebook it runs
    port = free_port()
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(home/'config'), 'JUPYTER_RUNTIME_DIR': str(home/'runtime'),
           'IPYTHONDIR': str(home/'ipython'), 'MDF_LOSS_DATA': str(home/'no-data')}  # the tutorial must not need data
    env.pop('IN_TEST', None)
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={port}', '--ServerApp.port_retries=0',
           f'--IdentityProvider.token={TOKEN}', f'--ServerApp.root_dir={root}', f'--LabApp.user_settings_dir={settings}',
           f'--LabApp.workspaces_dir={home/"workspaces"}', '--LabApp.news_url=None', '--LabApp.expose_app_in_browser=True']
    if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')  # CI containers run as root
    log = open(ARTIFACTS/'jupyterlab.log', 'w')
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None: pytest.fail(f'JupyterLab exited with code {server.returncode}; see {ARTIFACTS/"jupyterlab.log"}')
            try:
                with urllib.request.urlopen(f'{base}/api/status?token={TOKEN}', timeout=2) as r:
                    if r.status == 200: break
            except OSError: pass
            if time.monotonic() > deadline: pytest.fail(f'JupyterLab did not answer within 90 s; see {ARTIFACTS/"jupyterlab.log"}')
            time.sleep(0.5)
        yield base, TUTORIAL.name
    finally:
        server.terminate()
        try: server.wait(15)
        except subprocess.TimeoutExpired: server.kill(); server.wait(5)
        log.close()


# Where the notebook stands, read from JupyterLab's own model (exposed with --LabApp.expose_app_in_browser).
NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const cells = panel.content.model ? Array.from(panel.content.model.cells) : [];
  const code = cells.filter(c => c.type === 'code');
  const errors = [];
  for (const c of code) for (const o of c.outputs.toJSON()) if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {kernel: kernel ? kernel.status : null, cells: code.length,
          done: code.filter(c => c.executionCount !== null && c.executionState !== 'running').length, errors};
}"""


def wait_for(page, predicate, timeout: float, what: str, poll: float = 0.5):
    "Poll `predicate()` until it returns something truthy; fail with `what` after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value: return value
        page.wait_for_timeout(poll*1000)
    page.screenshot(path=str(ARTIFACTS/'timeout.png'), full_page=True)
    pytest.fail(f'timed out after {timeout:.0f} s waiting for {what} (screenshot: {ARTIFACTS/"timeout.png"})')


def test_explorer_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright
    base, name = lab
    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1100})
            page.goto(f'{base}/lab/tree/{name}?token={TOKEN}')
            page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=60_000)
            page.wait_for_timeout(1000)
            dialog = page.locator('.jp-Dialog', has_text='Select Kernel')  # only if the notebook names no kernel
            if dialog.count(): dialog.locator('button', has_text='Select').click()
            wait_for(page, lambda: (page.evaluate(NOTEBOOK_STATE) or {}).get('kernel') == 'idle', 60, 'the kernel to start')

            # Run > Run All Cells, as a user would
            page.locator('.lm-MenuBar-item', has_text='Run').first.click()
            page.locator('.lm-Menu-item', has_text='Run All Cells').first.click()
            explorer = page.locator('.mdf-explorer').first
            explorer.wait_for(state='visible', timeout=RUN_TIMEOUT*1000)
            state = wait_for(page, lambda: (lambda s: s if s and (s['errors'] or (s['done'] == s['cells'] and s['kernel'] == 'idle')) else None)(
                page.evaluate(NOTEBOOK_STATE)), RUN_TIMEOUT, 'all cells to run')
            assert not state['errors'], f"the tutorial raised in the browser: {state['errors']}"
            ran = time.monotonic() - t0

            value, picture = explorer.locator('.mdf-value'), explorer.locator('img.mdf-picture')
            explorer.scroll_into_view_if_needed()
            before, picture_before = value.text_content().strip(), picture.get_attribute('src')
            assert float(before) > 0, before
            page.screenshot(path=str(ARTIFACTS/'before.png'))

            # move the strength slider two steps to the right with the keyboard
            handle = explorer.locator('.mdf-strength .noUi-handle').first
            handle.click()
            handle.press('ArrowRight'); handle.press('ArrowRight')
            wait_for(page, lambda: value.text_content().strip() != before and picture.get_attribute('src') != picture_before, 60,
                     'the loss value and the picture to update after the slider moved')
            after = value.text_content().strip()
            readout = explorer.locator('.mdf-strength .widget-readout').first.text_content().strip()
            explorer.screenshot(path=str(ARTIFACTS/'browser_explorer.png'))
            page.screenshot(path=str(ARTIFACTS/'page.png'), full_page=True)
        finally:
            browser.close()
    assert float(after) > float(before), f'the MDF loss should rise with the noise: {before} -> {after}'
    assert readout == '5', f'the strength slider shows {readout!r}, expected 5 (3 + two ArrowRight presses)'
    print(f'tutorial ran in the browser in {ran:.0f} s; MDF loss {before} -> {after} at strength 3 -> 5; '
          f'whole test {time.monotonic() - t0:.0f} s')
