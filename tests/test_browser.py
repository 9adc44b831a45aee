"""End to end in a real browser, as a reader finishes the course.

In JupyterLab: JupyterLab serves the widgets tutorial, headless Chromium (driven by Playwright) runs all its cells,
moves the explorer's strength slider with the keyboard, and checks that the loss and the picture follow.
On the documentation site (`bash .ci/docs`, served as in test_docs_site.py): the previous/next links at the foot of
every page go in reading order (the home page, the tutorials in the order of .ci/sphinx/conf.py, then the library
chapters by file name), and a folded exercise answer opens when its summary is clicked.

Needs Debian's `chromium` (apt-get install chromium) and the dev extras (jupyterlab, ipywidgets, playwright); the site
tests need the site built, or the docs extra to build it. No browser is downloaded: Playwright drives the system
Chromium through `executable_path` (conftest.py). Without Chromium the tests skip and say why. Screenshots and the
JupyterLab log go to test-artifacts/browser/.
"""
import ast, json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, SITE, chromium_or_skip

TUTORIAL = ROOT/'nbs'/'tutorials'/'what_the_loss_sees.ipynb'
ARTIFACTS = ROOT/'test-artifacts'/'browser'
TOKEN = 'mdf-loss-browser-test'
RUN_TIMEOUT = 150  # seconds for the whole tutorial to run in the browser's kernel


def requirements_or_skip():
    "Skip, saying what is missing, unless Chromium, Playwright and JupyterLab are all here."
    chromium_or_skip('browser test')
    for module, package in (('jupyterlab', 'jupyterlab'), ('ipywidgets', 'ipywidgets')):
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


@pytest.fixture(scope='module', autouse=True)
def artifacts():
    "A fresh folder for this module's screenshots and logs."
    shutil.rmtree(ARTIFACTS, ignore_errors=True); ARTIFACTS.mkdir(parents=True)


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


def test_explorer_in_jupyterlab(lab, browser):
    base, name = lab
    t0 = time.monotonic()
    page = browser.new_page(viewport={'width': 1400, 'height': 1100})
    try:
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
        page.close()
    assert float(after) > float(before), f'the MDF loss should rise with the noise: {before} -> {after}'
    assert readout == '5', f'the strength slider shows {readout!r}, expected 5 (3 + two ArrowRight presses)'
    print(f'tutorial ran in the browser in {ran:.0f} s; MDF loss {before} -> {after} at strength 3 -> 5; '
          f'whole test {time.monotonic() - t0:.0f} s')


# ---------------------------------------------------------------- the documentation site

def reading_order() -> list[str]:
    "The site's pages in reading order: home, the tutorials as .ci/sphinx/conf.py lists them, then the library chapters."
    conf = ast.parse((ROOT/'.ci'/'sphinx'/'conf.py').read_text())  # read, not run: it needs the docs packages
    listed = next(ast.literal_eval(node.value) for node in conf.body if isinstance(node, ast.Assign)
                  and any(getattr(t, 'id', None) == 'tutorials' for t in node.targets))
    nbs = ROOT/'nbs'
    shown = lambda p: not p.name.startswith(('_', '.'))  # nbdev skips the rest, and so does the site
    tutorials = [t for t in listed if (nbs/t).is_file()]
    tutorials += sorted(p.relative_to(nbs).as_posix() for p in (nbs/'tutorials').glob('*.ipynb')
                        if shown(p) and p.relative_to(nbs).as_posix() not in tutorials)
    chapters = sorted(p.name for p in nbs.glob('*.ipynb') if shown(p) and p.name != 'index.ipynb')
    return ['index.html'] + [nb[:-len('.ipynb')] + '.html' for nb in tutorials + chapters]


# Follows the 'next' links from a page, reading each page with the browser's fetch and DOMParser (no rendering, so
# that 30 pages take a second); returns every page's URL and the URL of its 'previous' link.
FOLLOW_NEXT = """async (start) => {
  const pages = [], prevs = [];
  let url = new URL(start, location.href).href;
  while (url && pages.length < 200) {
    const doc = new DOMParser().parseFromString(await (await fetch(url)).text(), 'text/html');
    const link = cls => { const a = doc.querySelector('a.' + cls); return a ? new URL(a.getAttribute('href'), url).href : null; };
    pages.push(url); prevs.push(link('prev-page'));
    url = link('next-page');
  }
  return {pages, prevs};
}"""


def test_pages_follow_in_reading_order(site_url, browser):
    "From the home page the 'next' links visit every page in reading order, and each 'previous' link goes one back."
    t0, order = time.monotonic(), reading_order()
    page = browser.new_page(viewport={'width': 1280, 'height': 900})
    try:
        page.goto(f'{site_url}/{order[0]}', wait_until='domcontentloaded')
        chain = page.evaluate(FOLLOW_NEXT, order[0])
        visited = [u[len(site_url) + 1:] for u in chain['pages']]
        wrong_prev = [f"{here}: 'previous' goes to {prev}" for here, prev, before
                      in zip(chain['pages'], chain['prevs'], [None] + chain['pages'][:-1]) if prev != before]
        # and a reader's click, where the tutorials end and the library chapters begin
        last_tutorial = max(i for i, name in enumerate(order) if name.startswith('tutorials/'))
        page.goto(f'{site_url}/{order[last_tutorial]}', wait_until='domcontentloaded')
        with page.expect_navigation(wait_until='domcontentloaded'): page.locator('a.next-page').click()
        clicked = page.url[len(site_url) + 1:]
    finally: page.close()
    first_difference = next((i for i, (a, b) in enumerate(zip(visited, order)) if a != b), min(len(visited), len(order)))
    assert visited == order, f'the next links run {visited}, expected {order}; first difference at page {first_difference}'
    assert not wrong_prev, wrong_prev
    assert clicked == order[last_tutorial + 1], f"'next' on {order[last_tutorial]} went to {clicked}"
    print(f'{len(visited)} pages in reading order, previous links agree; {time.monotonic() - t0:.1f} s')


def test_folded_answer_opens_on_click(site_url, browser):
    "Each page with exercise answers shows them folded, and the first opens when its summary is clicked."
    pages = sorted(p.relative_to(SITE).as_posix() for p in (SITE/'tutorials').glob('*.html')
                   if '<summary>Answer</summary>' in p.read_text(encoding='utf-8'))
    assert pages, 'no tutorial page has a folded answer (<details><summary>Answer</summary> ...)'
    page = browser.new_page(viewport={'width': 1280, 'height': 900})
    try:
        for name in pages:
            page.goto(f'{site_url}/{name}', wait_until='domcontentloaded')
            assert 'hidden cell' not in page.locator('article').inner_text(), f'{name} points at a hidden cell'
            answers = page.locator('article details', has=page.locator('summary', has_text='Answer'))
            assert answers.count() and all(not answers.nth(i).evaluate('d => d.open') for i in range(answers.count())), \
                f'{name}: the answers should start folded'
            answer = answers.first
            text = answer.locator(':scope > :not(summary)').first
            assert not text.is_visible(), f'{name}: a folded answer shows its text'
            answer.locator('summary').click()
            assert answer.evaluate('d => d.open') and text.is_visible(), f'{name}: the answer did not open on click'
            answer.screenshot(path=str(ARTIFACTS/f"answer_{name.split('/')[-1][:-len('.html')]}.png"))
            print(f'{name}: {answers.count()} folded answers; the first opened on click')
    finally: page.close()
