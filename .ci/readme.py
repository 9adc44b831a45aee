"""README.md from nbs/index.ipynb: the notebook as Markdown (nbconvert), without the code of the cells flagged
`#| echo: false` (their outputs stay), as the documentation site shows the same page. Quarto, which nbdev_readme
needs, is not available here.

Usage: python .ci/readme.py [--stdout]
"""
import re
import sys
from pathlib import Path

import warnings

import nbformat
from nbconvert import MarkdownExporter
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
ECHO_OFF = re.compile(r'^\s*#\s*\|\s*echo:\s*false\s*$', re.M)


def render() -> str:
    "The README's text."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # nbdev_clean leaves cells without ids, which nbformat 5 merely warns about
        nb = nbformat.read(ROOT/'nbs'/'index.ipynb', as_version=4)
    for cell in nb.cells:
        if cell.cell_type == 'code' and ECHO_OFF.search(cell.source):
            cell.metadata.setdefault('tags', []).append('remove_input')
    config = Config()
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    return MarkdownExporter(config=config).from_notebook_node(nb)[0]


if __name__ == '__main__':
    text = render()
    if '--stdout' in sys.argv[1:]: sys.stdout.write(text)
    else: (ROOT/'README.md').write_text(text)
