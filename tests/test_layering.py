"""The shape of the house: the modules import each other in the order of the notebooks, without a cycle; argparse
lives in the command line only; no module outgrows one subject; a task is named in the task registry only; and the
library is generated from the notebooks."""
from __future__ import annotations

import ast
import re
from configparser import ConfigParser
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT/'mdf_loss'
MODULES = {p: '.'.join(p.relative_to(ROOT).with_suffix('').parts) for p in sorted(PKG.rglob('*.py'))
           if p.name not in ('_modidx.py',)}
NAMES = {name.removesuffix('.__init__'): p for p, name in MODULES.items()}


def imports_of(path: Path) -> set[str]:
    "The package modules `path` imports (at any depth, lazy imports included)."
    tree, found = ast.parse(path.read_text()), set()
    me = MODULES[path].removesuffix('.__init__')
    package = me if path.name == '__init__.py' else me.rpartition('.')[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import): names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(parts + ([node.module] if node.module else []))
            names = [base] + [f'{base}.{a.name}' for a in node.names]
        else: continue
        found |= {n for n in names if n in NAMES and n != me}
    return found


def test_the_import_graph_has_no_cycle():
    graph = {name: imports_of(path) for name, path in NAMES.items()}
    state = {}
    def visit(n, stack):
        if state.get(n) == 'done': return
        assert state.get(n) != 'open', f"import cycle: {' -> '.join(stack + [n])}"
        state[n] = 'open'
        for m in graph[n]: visit(m, stack + [n])
        state[n] = 'done'
    for n in graph: visit(n, [])


def _notebook_of(path: Path) -> str:
    m = re.search(r'File to edit: \.\./(?:\.\./)?nbs/(\S+)\.ipynb', path.read_text())
    return m.group(1) if m else ''


def test_each_module_imports_only_from_lower_notebooks():
    "The notebook numbers are the dependency order: a module imports only modules whose notebook comes earlier."
    order = {name: _notebook_of(path) for name, path in NAMES.items()}
    for name, path in NAMES.items():
        if not order[name]: continue  # __init__.py
        for dep in imports_of(path):
            if dep == 'mdf_loss' or not order.get(dep): continue
            assert order[dep] < order[name], f"{name} ({order[name]}) imports {dep} ({order[dep]}), a later notebook"


def test_argparse_lives_in_the_command_line_only():
    users = [MODULES[p] for p in MODULES if re.search(r'^\s*(import argparse|from argparse|import .*\bargparse\b)', p.read_text(), re.M)]
    assert users == ['mdf_loss.cli'], users


def test_no_module_outgrows_one_subject():
    sizes = {MODULES[p]: len(p.read_text().splitlines()) for p in MODULES}
    assert max(sizes.values()) <= 500, {m: n for m, n in sizes.items() if n > 500}


def test_no_line_is_longer_than_120_characters():
    """Every line of the package fits 120 columns, but the first of nbdev's generated `__all__` (nbdev wraps the list
    at 120, then prefixes `__all__ = `); the generated `_modidx.py` is left out likewise."""
    long = [f'{MODULES[p]}:{n}' for p in MODULES for n, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120 and not line.startswith('__all__ = [')]
    assert not long, long


def _docstrings(tree: ast.AST) -> set[int]:
    "ids of the docstring constants of `tree` and of the values of `__all__` (names of functions, not of tasks)."
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant): out.add(id(first.value))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '__all__' for t in node.targets):
            out |= {id(n) for n in ast.walk(node.value)}
    return out


def _task_literals(tree: ast.AST, names: set) -> list[tuple[int, str]]:
    """String constants that spell a task's name anywhere code holds them (compared, passed, assigned, a default, a dict
    key, a tuple or list member), and task names quoted inside any other string or f-string (docstrings aside)."""
    quoted = re.compile(r"""['"`](%s)['"`]""" % '|'.join(map(re.escape, sorted(names))))
    skip = _docstrings(tree)
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
            and (n.value in names or quoted.search(n.value))]


def test_the_literal_guard_catches_every_form():
    from mdf_loss.tasks import task_names
    names = set(task_names())
    code = ("if task == 'sisr': pass\nf(task='jpeg')\ndef g(t='denoise'): pass\nd = {'jpeg': 1}\nt = ('x', 'sisr')\n"
            "m = f\"only for task 'custom', not {t}\"\nn = \"resuming a 'deblur' run\"\n"
            "def h():\n    'A docstring may say \\'jpeg\\'.'\n__all__ = ['jpeg']\n")
    assert sorted(_task_literals(ast.parse(code), names)) == [
        (1, 'sisr'), (2, 'jpeg'), (3, 'denoise'), (4, 'jpeg'), (5, 'sisr'), (6, "only for task 'custom', not "),
        (7, "resuming a 'deblur' run")]


def test_task_names_are_spelled_in_the_registry_only():
    "Outside tasks.py no module spells a built-in task's name: the tools ask the registry."
    from mdf_loss.tasks import task_names
    names = set(task_names())
    found = {mod: hits for path, mod in MODULES.items() if mod != 'mdf_loss.tasks' and (hits := _task_literals(ast.parse(path.read_text()), names))}
    assert not found, found


def test_no_private_name_is_imported_across_modules():
    "A module uses another's public names only: `from .widgets import _tm` would tie it to an internal detail."
    found = []
    for path, mod in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or '').startswith('mdf_loss')):
                found += [(mod, node.module, a.name) for a in node.names if a.name.startswith('_') and a.name != '__version__']
    assert not found, found


def test_library_matches_its_notebooks(tmp_path):
    "The modules are what nbdev_export makes of the notebooks: exporting again changes nothing."
    nbdev = pytest.importorskip('nbdev')
    import shutil, subprocess, sys
    work = tmp_path/'repo'
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns('.git', '.venv', '_docs', '_proc', 'runs', 'build', '*.egg-info', '__pycache__'))
    r = subprocess.run([sys.executable, '-c', 'from nbdev.doclinks import nbdev_export; nbdev_export()'], cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for p in sorted((ROOT/'mdf_loss').rglob('*.py')):
        assert p.read_text() == (work/p.relative_to(ROOT)).read_text(), f'{p.relative_to(ROOT)} differs from its notebook: run nbdev_export'


def test_no_test_module_imports_another():
    "Shared test helpers live in conftest.py; a test module that imports another runs that module's tests' set-up too."
    found = []
    for path in sorted((ROOT/'tests').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            found += [(path.name, n) for n in names if n.startswith('test_')]
    assert not found, found
