"""Sphinx configuration of the documentation site (`bash .ci/docs`).

The source folder is made by prepare.py from nbs/; this folder holds the configuration, the scripts and static files.
"""
import importlib.util, shutil
from configparser import ConfigParser
from pathlib import Path

# Tutorials in reading order (paths relative to nbs/). A tutorial notebook missing from this list still gets a page,
# after these; the library reference notebooks follow in file-name order.
tutorials = [
    'tutorials/quickstart.ipynb',
    'tutorials/mdf_from_scratch.ipynb',
    'tutorials/what_the_loss_sees.ipynb',
    'tutorials/train_your_own_loss.ipynb',
    'tutorials/restoration_experiments.ipynb',
    'tutorials/when_mdf_helps.ipynb',
]

_ini = ConfigParser(delimiters=['='])
_ini.read(Path(__file__).resolve().parents[2]/'settings.ini', encoding='utf-8')
_cfg = _ini['DEFAULT']

project = _cfg.get('title', 'mdf_loss')
author = _cfg.get('author', '')
copyright = _cfg.get('copyright', '')
release = version = _cfg.get('version', '')
language = 'en'
root_doc = 'index'

extensions = ['myst_nb']

# MathJax 3 from the `sphinx-mathjax-offline` wheel, copied into _static, instead of Sphinx's default CDN copy: math
# renders with no network. (Only its files are used: as an extension it would make Sphinx read serially, with a warning.)
_MATHJAX = Path(importlib.util.find_spec('sphinx-mathjax-offline').origin).parent/'static'/'mathjax'
mathjax_path = 'mathjax/tex-chtml.js'  # a relative path is served from _static


def _copy_mathjax(app, exc):
    "Copy MathJax's components (loaded on demand) and the one combined script we load; skip the other combinations."
    if exc is None and app.builder.format == 'html':
        skip = lambda d, names: [n for n in names if Path(d) == _MATHJAX and n.endswith('.js') and n != 'tex-chtml.js']
        shutil.copytree(_MATHJAX, Path(app.outdir)/'_static'/'mathjax', ignore=skip, dirs_exist_ok=True)


def setup(app): app.connect('build-finished', _copy_mathjax)


# The notebooks are saved executed; the site shows their saved outputs and runs nothing.
nb_execution_mode = 'off'
nb_merge_streams = True
# show_doc tables and any markdown a cell displays: full MyST, so tables, links to other pages and math work there too.
nb_render_markdown_format = 'myst'
# No ipywidgets embed scripts: they come from a CDN and a static page cannot run a widget anyway (prepare.py puts a
# note and the saved snapshot in place of each widget).
nb_ipywidgets_js = {}

myst_enable_extensions = ['dollarmath', 'html_image']
myst_heading_anchors = 4  # API entries (show_doc's ### headings) get anchors that nbdev's symbol links point at
suppress_warnings = [
    'myst.header',  # show_doc entries are ### headings, often straight below the page's # title
]

exclude_patterns = ['**.ipynb_checkpoints', '**.md', '**.rst']  # the notebooks are the pages; other files in nbs/
                                                                 # (images, data) are only linked or shown

html_theme = 'furo'
html_title = project
html_static_path = ['static']
html_css_files = ['custom.css']
html_favicon = 'static/favicon.svg'  # without one the browser asks for /favicon.ico and logs a 404
html_copy_source = False  # the notebooks are in the repository; keep the site small
html_show_sourcelink = False
