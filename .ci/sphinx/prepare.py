"""Turn the notebooks in nbs/ into the Sphinx source folder that `.ci/docs` builds.

Usage: python .ci/sphinx/prepare.py BUILD_DIR [--reuse-nbdev]   (writes BUILD_DIR/src; works in BUILD_DIR/nbdev, /work)

Two stages:
1. nbdev: each notebook goes through nbdev's own processors, the list `nbdev_proc_nbs` runs before Quarto (`#| hide`
   and export cells, `show_doc` for every exported symbol, links on backticked symbols), two notebooks at a time,
   working in a scratch copy of nbs/. nbdev runs the cells that hold imports, exports or show_doc; two changes to
   that: a cell other than show_doc keeps the outputs saved in the notebook (the page shows what its author saw),
   and a failing cell is recorded and processing goes on, so one build lists every failing cell.
2. What Quarto would then have done and myst-nb does not: the title cell, the `#| echo/output/include` options,
   `show_doc` output placed in the page as markdown, nbdev's symbol links pointed at these pages, widget outputs
   replaced by a note and their saved snapshot, and the table of contents on the home page.

Failing cells are reported as 'notebook: cell N: error' (N counts from 0, in the notebook as saved); the script
still writes every page, then exits 1.
"""
import json, multiprocessing, os, posixpath, re, runpy, shutil, sys, time, traceback, warnings
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WIDGET_VIEW = 'application/vnd.jupyter.widget-view+json'
SKIP = re.compile(r'^[_.]')  # nbdev skips files and folders named like this (nbglob's default)
SHOW_DOC = re.compile(r'^show_doc', re.M)  # how nbdev tells a show_doc cell (processors._is_showdoc)
NBDEV_TIMEOUT = 480  # seconds for all of stage 1: a cell that hangs must not hang the build


def sources(nbs: Path):
    "Files under `nbs` that nbdev would see, as paths relative to it."
    for p in sorted(nbs.rglob('*')):
        rel = p.relative_to(nbs)
        if p.is_file() and not any(SKIP.match(part) for part in rel.parts): yield rel


# ---------------------------------------------------------------- stage 1: nbdev's processors

def nbdev_stage(job):
    "Run nbdev's processors on one notebook; return (notebook, failures, seconds)."
    src, dst, cwd = map(Path, job)
    os.chdir(cwd)                # relative paths in cells resolve as in the notebook's folder, inside a scratch copy
    os.environ['IN_TEST'] = '1'  # as nbdev's own driver (nbdev.serve_drv) sets it
    from execnb.nbio import read_nb, write_nb
    from nbdev.processors import FilterDefaults, exec_show_docs
    t0 = time.monotonic()

    class ExecKeepingOutputs(exec_show_docs):
        """nbdev's executor, with two changes: every cell but `show_doc` keeps its saved outputs, and a failing cell is
        recorded (by the notebook's own cell index) and processing goes on, so one run reports every failing cell."""
        def __call__(self, cell):
            saved = cell.get('outputs')
            try: super().__call__(cell)
            except Exception as e:
                cause = e.__cause__ or e
                where = (f"cell {cell.metadata['mdf_cell']}" if 'mdf_cell' in cell.metadata
                         else f'the `{cell.source.strip().splitlines()[-1]}` cell nbdev adds')
                # the line of the cell that raised (IPython names cells '<ipython-input-...>')
                tb = [f for f in traceback.extract_tb(cause.__traceback__) if f.filename.startswith('<ipython-input')]
                line = f' (line {tb[-1].lineno}: {tb[-1].line.strip()})' if tb and tb[-1].line else ''
                error = type(cause).__name__ + (f': {str(cause).strip()}'.splitlines()[0] if str(cause).strip() else '')
                failures.append(f'{where}: {error}{line}')
                self.k.exc = None  # nbdev checks it after every cell, run or not
            if cell.cell_type == 'code' and not SHOW_DOC.search(cell.source): cell.outputs = saved or []

    class Procs(FilterDefaults):
        def base_procs(self): return [ExecKeepingOutputs if p is exec_show_docs else p for p in super().base_procs()]

    failures = []
    nb = read_nb(src)
    for i, cell in enumerate(nb.cells): cell.metadata['mdf_cell'] = i  # the notebook's own index, for messages
    # nbdev's FrontmatterProc turns the first `# Title` markdown cell into YAML and drops the whole cell, even text
    # after the title: keep that cell's text to put back in stage 2.
    title = next((c for c in nb.cells if c.cell_type == 'markdown' and re.search(r'^#\s+\S', c.source, re.M)), None)
    title_text = title and title.source
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # nbdev's FAQ hint on cells that mix imports and code: failures say more
        try: Procs()(nb)
        except Exception as e: return str(src), [f'{type(e).__name__}: {e}'], time.monotonic() - t0
    if title is not None and all(c is not title for c in nb.cells): nb.metadata['mdf_title_cell'] = title_text
    write_nb(nb, dst)
    return str(src), failures, time.monotonic() - t0


# ---------------------------------------------------------------- stage 2: from nbdev's output to myst-nb's input

def text(x): return ''.join(x) if isinstance(x, list) else (x or '')


def quarto_options(source: str):
    "Split a code cell into its leading `#| key: value` options (Quarto's, left by nbdev) and the code."
    opts, lines = {}, source.splitlines()
    while lines and re.match(r'\s*#\|', lines[0]):
        k, _, v = lines.pop(0).split('|', 1)[1].partition(':')
        opts[k.strip()] = v.strip().strip('"\'').lower()
    return opts, '\n'.join(lines).strip('\n')


def widget_note(output):
    "A widget cannot run on a static page: say so, and keep the snapshot the notebook saved beside it."
    note = {'output_type': 'display_data', 'metadata': {}, 'data': {'text/html': (
        '<div class="admonition note mdf-widget-note"><p class="admonition-title">Live widget</p>'
        '<p>This output is an interactive ipywidgets app. Run the notebook in JupyterLab (a live kernel) to use it'
        + ('; below is the snapshot saved with the notebook.' if 'image/png' in output.get('data', {}) else '.')
        + '</p></div>')}}
    rest = {k: v for k, v in output['data'].items() if k not in (WIDGET_VIEW, 'text/plain')}
    return [note] + ([{'output_type': 'display_data', 'metadata': {}, 'data': rest}] if rest else [])


def clean_outputs(outputs):
    res = []
    for o in outputs:
        o = {k: v for k, v in o.items() if k in ('output_type', 'name', 'text', 'data', 'metadata', 'execution_count',
                                                  'ename', 'evalue', 'traceback')}
        if WIDGET_VIEW in o.get('data', {}): res += widget_note(o)
        else: res.append(o)
    return res


def convert(nb: dict):
    "nbdev's processed notebook -> cells myst-nb renders as Quarto would have rendered them."
    cells = []
    title = nb['metadata'].pop('mdf_title_cell', None)
    for c in nb['cells']:
        src = text(c.get('source'))
        if c['cell_type'] == 'raw' and src.startswith('---'):  # nbdev's frontmatter: back to a title cell
            fm = __import__('yaml').safe_load(src.strip().strip('-')) or {}
            src = title or f"# {fm.get('title', '')}\n\n" + (f"> {fm['description']}" if fm.get('description') else '')
            c = {'cell_type': 'markdown', 'metadata': {}}
        if c['cell_type'] == 'markdown':
            if src.strip() and not re.fullmatch(r'\s*<!--.*?-->\s*', src, re.S):  # nbdev's "autogenerated" comment
                cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': src})
            continue
        if c['cell_type'] != 'code': continue
        opts, code = quarto_options(src)
        outputs = clean_outputs(c.get('outputs', []))
        if opts.get('include') == 'false': continue
        if opts.get('output') == 'asis':  # show_doc: its markdown becomes part of the page (headings, anchors, TOC)
            md = '\n\n'.join(text(o['data']['text/markdown']) for o in outputs if 'text/markdown' in o.get('data', {}))
            md = re.sub(r'\A\s*---\s*\n', '', md)  # nbdev's rule above each entry; a section may not start with one
            if md.strip(): cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': md})
            continue
        tags = [t for k, t in (('echo', 'remove-input'), ('output', 'remove-output')) if opts.get(k) == 'false']
        if not code.strip() and not outputs: continue
        cells.append({'cell_type': 'code', 'metadata': {'tags': tags} if tags else {}, 'source': code,
                      'outputs': outputs, 'execution_count': c.get('execution_count')})
    meta = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
            'language_info': {'name': 'python', 'pygments_lexer': 'ipython3'}}  # no widget state: no widget JS
    return {'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 4}


def github_slug(title: str) -> str:
    "The anchor myst gives a heading (myst_heading_anchors, GitHub style)."
    return re.sub(r'[^\w\- ]', '', title.lower().replace(' ', '-'))


def heading_slugs(nb: dict) -> set:
    found = set()
    for c in nb['cells']:
        if c['cell_type'] != 'markdown': continue
        md = re.sub(r'^```.*?^```', '', c['source'], flags=re.M | re.S)  # a `# comment` in a code block is no heading
        for h in re.findall(r'^#{1,4}\s+(.+?)\s*#*\s*$', md, re.M):
            found.add(github_slug(re.sub(r'[`*]|\[([^\]]*)\]\([^)]*\)', r'\1', h)))
    return found


class Linker:
    "Rewrites links in markdown: nbdev's doc links to these pages, `nbs/...` paths, Quarto's link attributes."
    def __init__(self, cfg, pages: dict):
        self.doc_base = cfg['doc_host'].rstrip('/') + '/' + cfg['doc_baseurl'].strip('/') + '/'
        self.git_base = cfg['git_url'].rstrip('/') + '/'
        # A placeholder host (RFC 2606 `.invalid`) can never resolve: leave out the "source" links that point there.
        self.drop_source = (urlsplit(cfg['git_url']).hostname or '').endswith('.invalid')
        self.pages = pages  # notebook path relative to nbs (posix) -> its heading slugs
        # nbdev names a page after its notebook, lower case and without the number prefix (doclinks._nbpath2html)
        self.html = {re.sub(r'^\d+[a-zA-Z0-9]*_', '', posixpath.basename(p).lower())[:-len('.ipynb')] + '.html':
                     p for p in pages}

    def target(self, url: str, here: str):
        "Where `url`, written in notebook `here`, should point; None to leave it as it is."
        if url.startswith(self.doc_base):  # nbdev symbol link: page.html#symbol -> notebook.ipynb#slug
            page, _, anchor = url[len(self.doc_base):].partition('#')
            nb = self.html.get(page.split('/')[-1])
            if nb is None: return None
            slugs = self.pages[nb]
            for a in (anchor, anchor.split('.')[0]):  # the symbol, else its class (methods have no entry of their own)
                if a and github_slug(a) in slugs: return self.rel(nb, here) + '#' + github_slug(a)
            return self.rel(nb, here)
        if urlsplit(url).scheme or url.startswith(('#', '/')): return None
        path, frag = url.split('#', 1) if '#' in url else (url, None)
        if not path or (ROOT/'nbs'/posixpath.dirname(here)/path).exists(): return None
        from_root = (ROOT/path).resolve()  # e.g. index.ipynb says nbs/images/demo.png so that the README works
        if from_root.exists() and (ROOT/'nbs') in from_root.parents:
            return self.rel(from_root.relative_to(ROOT/'nbs').as_posix(), here) + (f'#{frag}' if frag else '')

    @staticmethod
    def rel(target: str, here: str) -> str: return posixpath.relpath(target, posixpath.dirname(here) or '.')

    def __call__(self, md: str, here: str) -> str:
        def source_link(m):
            return '' if self.drop_source and m.group(1).startswith(self.git_base) else f'[source]({m.group(1)})'
        md = re.sub(r'\[source\]\(([^)\s]+)\)(\{[^}\n]*\})?', source_link, md)
        md = re.sub(r'(\]\([^)\s]+\))\{[^}\n]*=[^}\n]*\}', r'\1', md)  # Quarto's {target="_blank" ...}
        def link(m):
            new = self.target(m.group(2), here)
            return m.group(0) if new is None else m.group(1) + new
        md = re.sub(r'(\]\()([^)\s]+)', link, md)
        return re.sub(r'(<img\s[^>]*?src=")([^"]+)', link, md)


# ---------------------------------------------------------------- the table of contents

def page_order(notebooks, tutorials_first):
    "Tutorials in the configured reading order, then any tutorial not listed; the rest in file-name order."
    tuts = [p for p in notebooks if p.startswith('tutorials/')]
    listed = [t for t in tutorials_first if t in tuts]
    for t in tutorials_first:
        if t not in tuts: print(f'docs: note: {t} is listed in .ci/sphinx/conf.py (tutorials) but is not in nbs/')
    extra = sorted(set(tuts) - set(listed))
    if extra: print(f'docs: note: tutorials not in the reading order of .ci/sphinx/conf.py, placed last: {extra}')
    reference = sorted(p for p in notebooks if p not in tuts and p != 'index.ipynb')
    return listed + extra, reference


def toctree(caption, pages):
    entries = '\n'.join(p[:-len('.ipynb')] for p in pages)
    return f'```{{toctree}}\n:hidden:\n:titlesonly:\n:caption: {caption}\n\n{entries}\n```'


# ---------------------------------------------------------------- main

def run_nbdev(nbs: Path, notebooks, stage1: Path, work: Path):
    "Stage 1 for every notebook, two at a time; returns the failures, each a line 'notebook: cell N: error'."
    shutil.rmtree(work, ignore_errors=True); shutil.rmtree(stage1, ignore_errors=True)
    shutil.copytree(nbs, work, ignore=shutil.ignore_patterns('.ipynb_checkpoints'))  # cells may write files: not into nbs/
    jobs = {}
    for f in sorted(notebooks, key=lambda f: -(nbs/f).stat().st_size):  # big (usually slow) ones first: less tail
        (stage1/f).parent.mkdir(parents=True, exist_ok=True)
        jobs[f] = (str(nbs/f), str(stage1/f), str((work/f).parent))
    # Processing needs only definitions and keeps the saved outputs: without shared data, data-heavy cells skip fast.
    os.environ['MDF_LOSS_DATA'] = str(work/'no-shared-data')
    failed, deadline = [], time.monotonic() + NBDEV_TIMEOUT
    # Two workers that each take notebook after notebook, as nbdev's proc_nbs does (each notebook gets a new shell).
    # The workers find nbdev_stage by this module's name: IPython's shell replaces __main__ inside them.
    sys.path.insert(0, str(HERE))
    from prepare import nbdev_stage as stage
    with multiprocessing.get_context('spawn').Pool(min(2, os.cpu_count() or 1)) as pool:
        running = {f: pool.apply_async(stage, (job,)) for f, job in jobs.items()}
        for f, result in running.items():
            try: _, failures, seconds = result.get(max(1, deadline - time.monotonic()))
            except multiprocessing.TimeoutError: failures, seconds = [f'still running after {NBDEV_TIMEOUT} s'], NBDEV_TIMEOUT
            except Exception as e: failures, seconds = [f'{type(e).__name__}: {e}'], 0
            failed += [f'{f}: {x}' for x in failures]
            print(f'docs: processed {f} in {seconds:.0f} s' + (f', {len(failures)} cells failed' if failures else ''),
                  flush=True)
        if not any('still running' in x for x in failed): pool.close(); pool.join()  # let the workers exit by themselves
    shutil.rmtree(work, ignore_errors=True)
    return failed


def main(build: Path, reuse_nbdev=False):
    from nbdev.config import get_config
    nbs = ROOT/'nbs'
    if not (nbs/'index.ipynb').exists():
        print('docs: ERROR: nbs/index.ipynb (the home page) is missing', file=sys.stderr); return 1
    files = list(sources(nbs))
    notebooks = [f for f in files if f.suffix == '.ipynb']
    out, stage1 = build/'src', build/'nbdev'  # stage 1's output is kept: `--reuse-nbdev` starts from it
    failed = [] if reuse_nbdev else run_nbdev(nbs, notebooks, stage1, build/'work')

    shutil.rmtree(out, ignore_errors=True)
    for f in files:
        if f.suffix != '.ipynb': (out/f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(nbs/f, out/f)
    pages = {f.as_posix(): convert(json.loads((stage1/f).read_text(encoding='utf-8'))) for f in notebooks
             if (stage1/f).exists()}
    linker = Linker(get_config(), {p: heading_slugs(nb) for p, nb in pages.items()})
    for here, nb in pages.items():
        for c in nb['cells']:
            if c['cell_type'] == 'markdown': c['source'] = linker(c['source'], here)
            for o in c.get('outputs', []):
                if 'text/markdown' in o.get('data', {}): o['data']['text/markdown'] = linker(text(o['data']['text/markdown']), here)
    tutorials, reference = page_order(list(pages), runpy.run_path(str(HERE/'conf.py'))['tutorials'])
    pages['index.ipynb']['cells'].append({'cell_type': 'markdown', 'metadata': {},
                                          'source': toctree('Tutorials', tutorials) + '\n\n' + toctree('Reference', reference)})
    for p, nb in pages.items():
        (out/p).parent.mkdir(parents=True, exist_ok=True)
        (out/p).write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding='utf-8')
    print(f'docs: {len(pages)} notebooks ready in {out}')
    if failed:  # the pages are written all the same, so that one build shows every problem (like sphinx --keep-going)
        print('docs: ERROR: cells failed in nbdev processing (cells count from 0; the pages may lack show_doc entries):\n  '
              + '\n  '.join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(Path(sys.argv[1]).resolve(), reuse_nbdev='--reuse-nbdev' in sys.argv[2:]))
