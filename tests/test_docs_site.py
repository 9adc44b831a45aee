"""The documentation site (`bash .ci/docs`, written to _docs/) in a real browser.

Serves _docs/ from 127.0.0.1 and opens it in headless Chromium (driven by Playwright): the home page and every tutorial
load with no console error, page error or failed request, and every picture on them shows; the page that documents
`MDFLoss` shows its `from_pretrained`; the search page finds `MDFLoss`. Builds the site first if _docs/index.html is
missing (that needs the docs extra: pip install -e ".[docs]"); the server and the browser are conftest.py's, shared
with test_browser.py. Screenshots go to test-artifacts/docs/.
"""
import re, shutil, time

import pytest

from conftest import ROOT, SITE

ARTIFACTS = ROOT/'test-artifacts'/'docs'


@pytest.fixture(scope='module', autouse=True)
def artifacts():
    "A fresh folder for this module's screenshots."
    shutil.rmtree(ARTIFACTS, ignore_errors=True); ARTIFACTS.mkdir(parents=True)


class Visit:
    "A browser page that records console errors, page errors, failed requests and HTTP errors."
    def __init__(self, browser):
        self.page = browser.new_page(viewport={'width': 1280, 'height': 900})
        self.problems = []
        self.page.on('console', lambda m: m.type == 'error' and self.problems.append(
            f"console error: {m.text} ({m.location.get('url', '?')})"))
        self.page.on('pageerror', lambda e: self.problems.append(f'page error: {e}'))
        self.page.on('requestfailed', lambda r: self.problems.append(f'request failed: {r.url} ({r.failure})'))
        self.page.on('response', lambda r: r.status >= 400 and self.problems.append(f'HTTP {r.status}: {r.url}'))

    def open(self, url):
        self.page.goto(url, wait_until='load')
        # Math is typeset by the local MathJax after load; wait for it, then for any fonts it asked for.
        self.page.evaluate('async () => { if (window.MathJax && MathJax.startup && MathJax.startup.promise) '
                           'await MathJax.startup.promise; }')
        self.page.wait_for_load_state('networkidle')
        return self.page

    def close(self): self.page.close()


def check_page(visit, url, shot):
    "Load `url`; fail on any recorded problem or a picture that is not shown; keep a full-page screenshot."
    page = visit.open(url)
    images = page.locator('article img')
    broken = []
    for i in range(images.count()):
        img = images.nth(i)
        img.scroll_into_view_if_needed()
        natural = img.evaluate('i => i.complete ? i.naturalWidth : 0')
        if not (img.is_visible() and natural > 0): broken.append(img.get_attribute('src')[:100])
    math = page.locator('article .math').count()
    typeset = page.locator('article mjx-container').count()
    page.evaluate('window.scrollTo(0, 0)')  # the sidebar is sticky: at the top it is drawn beside the page's start
    page.screenshot(path=str(ARTIFACTS/shot), full_page=True)
    assert not visit.problems, f'{url}: ' + '; '.join(visit.problems)
    assert not broken, f'{url}: pictures not shown: {broken}'
    assert not math or typeset, f'{url}: {math} math elements but MathJax typeset none'
    return images.count()


def tutorial_pages():
    "Every tutorial notebook has a page in the site (the build never drops one)."
    pages = sorted(p.relative_to(SITE).as_posix() for p in (SITE/'tutorials').glob('*.html'))
    expected = sorted(f'tutorials/{nb.stem}.html' for nb in (ROOT/'nbs'/'tutorials').glob('*.ipynb')
                      if not nb.name.startswith(('_', '.')))
    assert set(expected) <= set(pages), f'tutorials without a page: {sorted(set(expected) - set(pages))}'
    return pages


def test_home_and_tutorials_load_cleanly(site_url, browser):
    t0 = time.monotonic()
    pages = ['index.html'] + tutorial_pages()
    for name in pages:
        visit = Visit(browser)
        try: n = check_page(visit, f'{site_url}/{name}', re.sub(r'[/.]', '_', name[:-len('.html')]) + '.png')
        finally: visit.close()
        print(f'{name}: {n} pictures, no errors')
    print(f'{len(pages)} pages in {time.monotonic() - t0:.0f} s')


def test_mdfloss_api_page(site_url, browser):
    # Notebooks get renumbered: find the page by its API entry (the heading anchor of the class), not by name.
    found = [p for p in sorted(SITE.glob('*.html')) if 'id="mdfloss"' in p.read_text(encoding='utf-8')]
    assert found, 'no page documents MDFLoss (no element with id "mdfloss" in _docs/*.html)'
    visit = Visit(browser)
    try:
        check_page(visit, f'{site_url}/{found[0].name}#mdfloss', 'mdfloss.png')
        heading = visit.page.locator('#mdfloss h3, #mdfloss h2').first
        assert heading.is_visible() and heading.inner_text().strip().rstrip('¶#').strip() == 'MDFLoss'
        assert 'from_pretrained' in visit.page.locator('article').inner_text()
    finally: visit.close()


def test_search_finds_mdfloss(site_url, browser):
    visit = Visit(browser)
    try:
        page = visit.open(f'{site_url}/search.html?q=MDFLoss')
        results = page.locator('#search-results ul.search li a')
        results.first.wait_for(state='visible', timeout=30_000)
        page.screenshot(path=str(ARTIFACTS/'search.png'), full_page=True)
        assert not visit.problems, '; '.join(visit.problems)
        print(f'search for MDFLoss: {results.count()} results, first {results.first.inner_text()!r}')
    finally: visit.close()
