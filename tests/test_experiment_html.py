"""The experiment's HTML comparison page renders every image in a real browser (conftest.py's headless Chromium), and
its blind mode hides the names."""
from pathlib import Path

import pytest

from mdf_loss.core import bundled_image_path, load_image, to_pil
from mdf_loss.restoration.experiment import ExperimentConfig, run_experiment


@pytest.fixture(scope='module')
def page_path(tmp_path_factory) -> Path:
    "A two-step jpeg experiment on crops of the bundled photo, with the HTML page."
    root = tmp_path_factory.mktemp('html')
    photo = load_image(bundled_image_path())
    for name, size, spots in [('train', 64, [(0, 0), (200, 300)]), ('setA', 48, [(100, 100)]), ('setB', 48, [(300, 400)])]:
        (root/name).mkdir()
        for i, (t, l) in enumerate(spots): to_pil(photo[..., t:t + size, l:l + size]).save(root/name/f'{name}{i}.png')
    cfg = ExperimentConfig(task='jpeg', train_dir=root/'train', test_dirs=(root/'setA', root/'setB'),
                           losses=('l1', 'ssim', 'mdf-official'), preset='smoke', out_dir=str(root/'out'), html=True)
    run_experiment(cfg, progress=False)
    return root/'out'/'comparison.html'


def test_page_is_self_contained(page_path):
    text = page_path.read_text()
    assert 'src="http' not in text and '<link' not in text and '<script src' not in text
    assert text.count('<img src="data:image/png;base64,') == text.count('<img ')


def test_page_renders_in_chromium(page_path, browser):
    page = browser.new_page()
    try:
        page.goto(page_path.as_uri())
        page.wait_for_load_state('load')
        sizes = page.eval_on_selector_all('img', 'imgs => imgs.map(i => [i.complete, i.naturalWidth])')
        rows, runs = 4, 3  # 2 test sets x 2 JPEG qualities; l1, ssim, mdf-official
        assert len(sizes) == rows*2*(2 + runs)  # the named and the blind copy of each row
        assert all(done and width > 0 for done, width in sizes), sizes

        visible = lambda sel: page.eval_on_selector_all(sel, 'els => els.filter(e => e.offsetParent !== null).length')
        captions = lambda: page.eval_on_selector_all('figcaption', 'els => els.filter(e => e.offsetParent !== null).map(e => e.textContent)')
        assert visible('div.row.named') == rows and visible('div.row.blind') == 0
        assert 'mdf-official' in captions() and not page.is_visible('#key')

        page.check('#blind')
        assert visible('div.row.named') == 0 and visible('div.row.blind') == rows
        shown = captions()
        assert not {'l1', 'ssim', 'mdf-official'} & set(shown)
        assert {'A', 'B', 'C'} <= set(shown) and {'ground truth', 'input'} <= set(shown)
        assert page.is_visible('#key')
        assert all(page.eval_on_selector_all('div.row.blind img', 'imgs => imgs.map(i => i.naturalWidth > 0)'))
        page.click('#key summary')
        assert 'mdf-official' in page.inner_text('#key')
    finally:
        page.close()
