"""No code path runs code from a file: the authors' legacy pickles are read through an allow-list, nothing in the package
unpickles untrusted data, and a run folder never makes the package import the module it names."""
import ast, io, os, pickle, subprocess, sys, warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, Marker, legacy_pickle
from mdf_loss import MDFLoss
from mdf_loss.weights import LEGACY_MAGIC, LEGACY_PROTOCOL, UnsafePickleError, WeightFileError, import_official


def _singan_classes():
    "Stand-ins for the authors' unreleased SinGAN.models classes, to write legacy files as they did (test-only)."
    import types
    from torch import nn
    if 'SinGAN.models' in sys.modules: return sys.modules['SinGAN.models'].WDiscriminator
    class ConvBlock(nn.Sequential):
        def __init__(self, i, o):
            super().__init__()
            self.add_module('conv', nn.Conv2d(i, o, 3)); self.add_module('norm', nn.BatchNorm2d(o))
            self.add_module('LeakyRelu', nn.LeakyReLU(0.2))
    class WDiscriminator(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.head = ConvBlock(3, w); self.body = nn.Sequential(*[ConvBlock(w, w) for _ in range(3)]); self.tail = nn.Conv2d(w, 1, 3)
        def forward(self, x): return self.tail(self.body(self.head(x)))
    pkg, mod = types.ModuleType('SinGAN'), types.ModuleType('SinGAN.models')
    for c in (ConvBlock, WDiscriminator): c.__module__, c.__qualname__ = 'SinGAN.models', c.__name__
    mod.ConvBlock, mod.WDiscriminator, pkg.models = ConvBlock, WDiscriminator, mod
    sys.modules['SinGAN'], sys.modules['SinGAN.models'] = pkg, mod
    return WDiscriminator


@pytest.fixture(scope='module')
def legacy_file(tmp_path_factory) -> tuple[Path, list]:
    "A legacy (non-zip) torch.save of a list of WDiscriminators, as the authors published, written by this torch."
    W = _singan_classes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0); ds = [W(4).eval(), W(8).eval()]
        for d in ds:
            for m in d.modules():
                if isinstance(m, torch.nn.BatchNorm2d): m.running_var.uniform_(0.5, 2)
    p = tmp_path_factory.mktemp('legacy') / 'Ds_test.pth'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # "Couldn't retrieve source code for container": the classes are stand-ins
        torch.save(ds, p, _use_new_zipfile_serialization=False)
    return p, ds


def test_legacy_file_imports_and_equals_the_modules(legacy_file):
    p, ds = legacy_file
    found, meta = import_official(p, task='test')
    loss = MDFLoss(found, meta=meta)
    assert [d.width for d in loss.discriminators] == [4, 8] and meta['task'] == 'test'
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = sum(((a - b)**2).mean() for d in ds for a, b in zip(*(
            [d.head(t), d.body(d.head(t)), d.tail(d.body(d.head(t)))] for t in (x, y))))
    torch.testing.assert_close(loss(x, y), ref, rtol=1e-5, atol=0)


EVIL = {   # the payload, and the end of the global's name that the error must quote (protocol 2 writes Python 2 module names)
    'os.system': ".system'", 'subprocess': ".call'", 'eval': ".eval'", 'exec': ".exec'", 'builtins.open': ".open'",
    'torch.load': "torch.serialization.load'", 'getattr': ".getattr'",
}


@pytest.mark.parametrize('where', ['payload', 'inside a module record', 'as the magic number'])
@pytest.mark.parametrize('call', list(EVIL))
def test_legacy_pickle_with_unexpected_global_is_refused_and_nothing_runs(call, where, tmp_path):
    marker = tmp_path / 'pwned'
    evil = Marker(call, marker)
    if where == 'payload': data = legacy_pickle([evil])
    elif where == 'as the magic number': data = legacy_pickle([], magic=evil)
    else:
        W = _singan_classes(); d = W(4)
        d.__dict__['_modules']['head'] = evil   # a record whose state holds the payload
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); buf = io.BytesIO(); torch.save([d], buf, _use_new_zipfile_serialization=False)
        data = buf.getvalue()
    p = tmp_path / 'evil.pth'; p.write_bytes(data)
    with pytest.raises(UnsafePickleError) as e: import_official(p)
    assert "refused to load global '" in str(e.value) and EVIL[call] in str(e.value) and str(p) in str(e.value), str(e.value)
    assert 'Nothing was executed' in str(e.value)
    assert not marker.exists()


def test_legacy_pickle_other_protocols_refused(tmp_path):
    "Protocol 0 (INST, text GLOBAL) and 4 (STACK_GLOBAL) go through the same allow-list."
    marker = tmp_path / 'pwned'
    for proto in (0, 1, 4, 5):
        p = tmp_path / f'evil{proto}.pth'; p.write_bytes(legacy_pickle([Marker('os.system', marker)], pickle_protocol=proto))
        with pytest.raises(UnsafePickleError, match='refused to load global'): import_official(p)
    # INST opcode by hand: "(i" module "\n" name "\n"
    p = tmp_path / 'inst.pth'
    p.write_bytes(b''.join(pickle.dumps(x, 2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, {'little_endian': True}))
                  + b'(S"touch ' + str(marker).encode() + b'"\nios\nsystem\n.' + pickle.dumps([], 2))
    with pytest.raises(UnsafePickleError, match="'os.system'"): import_official(p)
    assert not marker.exists()


LEGACY_BROKEN = {   # name: (bytes from the good legacy file, error type, words)
    'empty': (lambda g: b'', WeightFileError, 'could not be parsed as a legacy torch file'),
    'truncated in the pickle': (lambda g: g[:300], WeightFileError, 'could not be parsed'),
    'truncated in the storages': (lambda g: g[:-100], WeightFileError, 'truncated'),
    'a zip-format torch.save file': (lambda g: b'PK\x03\x04' + g[4:], WeightFileError, 'zip-format torch.save file'),
    'other magic number': (lambda g: legacy_pickle([], magic=12345), WeightFileError, 'not a legacy torch.save file'),
    'other protocol': (lambda g: legacy_pickle([], protocol=7), WeightFileError, 'unsupported legacy protocol 7'),
    'big-endian': (lambda g: legacy_pickle([], sys_info={'little_endian': False}), WeightFileError, 'little-endian'),
    'not a list': (lambda g: legacy_pickle({'a': 1}), WeightFileError, 'does not hold a list of discriminators'),
    'empty list': (lambda g: legacy_pickle([]), WeightFileError, 'does not hold a list of discriminators'),
    'a list of numbers': (lambda g: legacy_pickle([1, 2]), WeightFileError, 'not a SinGAN WDiscriminator'),
    'storage table not a list': (lambda g: legacy_pickle([1], keys=5), WeightFileError, 'storage table is not a list'),
    'a storage listed but never used': (lambda g: legacy_pickle([1], keys=['7']), WeightFileError, "storage '7' is listed but never used"),
}


@pytest.mark.parametrize('case', list(LEGACY_BROKEN))
def test_broken_legacy_files(case, legacy_file, tmp_path):
    make, kind, words = LEGACY_BROKEN[case]
    p = tmp_path / 'broken.pth'; p.write_bytes(make(legacy_file[0].read_bytes()))
    with pytest.raises(kind) as e: import_official(p)
    assert str(p) in str(e.value) and words in str(e.value), str(e.value)


def test_legacy_records_of_the_wrong_structure(legacy_file, tmp_path):
    "Allowed classes arranged wrongly (a record without a head, a conv without a width): a WeightFileError, not a KeyError."
    W = _singan_classes()
    for n, breaker in enumerate([lambda d: d.__dict__['_modules'].pop('head'),
                                 lambda d: d.head.conv.__dict__.pop('out_channels'),
                                 lambda d: d.tail.__dict__.__setitem__('kernel_size', ()),
                                 lambda d: d.head.norm.__dict__.__setitem__('eps', 0.5)]):
        d = W(4); breaker(d)
        p = tmp_path / f'wrong{n}.pth'
        with warnings.catch_warnings():
            warnings.simplefilter('ignore'); torch.save([d], p, _use_new_zipfile_serialization=False)
        with pytest.raises(WeightFileError) as e: import_official(p)
        assert str(p) in str(e.value)
    with pytest.raises(IsADirectoryError, match='is a directory'): import_official(tmp_path)
    with pytest.raises(FileNotFoundError, match='does not exist'): import_official(tmp_path / 'missing.pth')


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
       truncate=st.none() | st.integers(0, 10**6))
def test_fuzzed_legacy_files_load_or_fail_cleanly(cuts, truncate, legacy_file, tmp_path):
    "Random byte changes of a legacy pickle: it imports, or fails with WeightFileError / UnsafePickleError; nothing else."
    b = bytearray(legacy_file[0].read_bytes())
    for pos, value in cuts: b[pos % len(b)] = value
    if truncate is not None: b = b[:truncate % len(b)]
    p = tmp_path / 'fuzzed.pth'; p.write_bytes(bytes(b))
    try: import_official(p)
    except (WeightFileError, UnsafePickleError) as e: assert str(p) in str(e)




UNSAFE = {   # callables that can run code from the data they read
    'pickle.load', 'pickle.loads', 'pickle.Unpickler', '_pickle.load', '_pickle.loads', 'cPickle.load', 'cPickle.loads',
    'marshal.load', 'marshal.loads', 'shelve.open', 'dill.load', 'dill.loads', 'cloudpickle.load', 'cloudpickle.loads',
    'joblib.load', 'jsonpickle.decode', 'torch.jit.load', 'torch.package.PackageImporter', 'pandas.read_pickle',
    'yaml.unsafe_load', 'eval', 'exec',
}


def _dotted(node) -> str:
    if isinstance(node, ast.Name): return node.id
    if isinstance(node, ast.Attribute): return f'{_dotted(node.value)}.{node.attr}'
    return ''


def _package_sources() -> list[Path]:
    return sorted(p for p in (ROOT / 'mdf_loss').rglob('*.py') if p.name != '_modidx.py')


def unsafe_calls(src: str) -> list[str]:
    "Calls in `src` that could deserialise untrusted data with code execution; import aliases resolved."
    tree = ast.parse(src)
    alias = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names: alias[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names: alias[a.asname or a.name] = f'{node.module}.{a.name}'
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):   # an Unpickler subclass must restrict find_class and never defer to the default
            bases = [_dotted(b) for b in node.bases]
            if any(alias.get(b.split('.')[0], b.split('.')[0]) + b[len(b.split('.')[0]):] in ('pickle.Unpickler', '_pickle.Unpickler') for b in bases):
                fc = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == 'find_class']
                if not fc: found.append(f'line {node.lineno}: {node.name} subclasses Unpickler without a restricted find_class')
                elif any(isinstance(n, ast.Attribute) and n.attr == 'find_class' for n in ast.walk(fc[0])):
                    found.append(f'line {node.lineno}: {node.name}.find_class defers to the default find_class')
        if not isinstance(node, ast.Call): continue
        name = _dotted(node.func)
        head = name.split('.')[0]
        full = alias.get(head, head) + name[len(head):]
        kw = {k.arg: k.value for k in node.keywords}
        if full in ('torch.load', 'torch.serialization.load'):
            v = kw.get('weights_only')
            if not (isinstance(v, ast.Constant) and v.value is True): found.append(f'line {node.lineno}: {name}(...) without weights_only=True')
        elif full in ('numpy.load',) and isinstance(kw.get('allow_pickle'), ast.Constant) and kw['allow_pickle'].value:
            found.append(f'line {node.lineno}: numpy.load(allow_pickle=True)')
        elif full == 'yaml.load' and 'Loader' not in kw:
            found.append(f'line {node.lineno}: yaml.load without a safe Loader')
        elif full in UNSAFE and not (full == 'pickle.Unpickler'):
            found.append(f'line {node.lineno}: {full}(...)')
    return found


def test_the_scanner_finds_unsafe_code():
    "The scanner itself, on code it must flag and code it must pass."
    bad = ['import torch\ntorch.load(p)', 'import torch\ntorch.load(p, weights_only=False)', 'from torch import load\nload(p)',
           'import pickle as pk\npk.loads(b)', 'from pickle import load\nload(f)', 'import numpy as np\nnp.load(p, allow_pickle=True)',
           'import torch\ntorch.jit.load(p)', 'eval(s)', 'import pickle\nclass U(pickle.Unpickler): pass',
           'import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n): return super().find_class(m, n)',
           'import yaml\nyaml.load(s)', 'import marshal\nmarshal.loads(b)']
    good = ['import torch\ntorch.load(p, map_location="cpu", weights_only=True)', 'import numpy as np\nnp.load(p)',
            'import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n): raise ValueError(n)',
            'import pickle\npickle.dumps(x)', 'model.eval()', 'import yaml\nyaml.load(s, Loader=yaml.SafeLoader)']
    for s in bad: assert unsafe_calls(s), s
    for s in good: assert not unsafe_calls(s), s


def test_no_unsafe_deserialisation_in_the_package():
    "No module calls torch.load without weights_only=True, pickle/marshal/dill loads, eval/exec, or an unrestricted Unpickler."
    problems = {str(p.relative_to(ROOT)): found for p in _package_sources() if (found := unsafe_calls(p.read_text()))}
    assert not problems, problems
    # and the one Unpickler there is refuses everything it does not know (checked by behaviour above; here: it exists)
    assert 'class _RestrictedUnpickler(pickle.Unpickler)' in (ROOT / 'mdf_loss' / 'weights.py').read_text()


def test_loading_never_unpickles(tmp_path, monkeypatch):
    "MDFLoss.load and from_pretrained read only safetensors: any pickle or torch.load call during them fails the test."
    def forbidden(*a, **k): raise AssertionError('unpickling during a weight load')
    monkeypatch.setattr(pickle, 'load', forbidden); monkeypatch.setattr(pickle, 'loads', forbidden)
    monkeypatch.setattr(pickle, 'Unpickler', forbidden); monkeypatch.setattr(torch, 'load', forbidden)
    from workers import tiny_discriminators
    good = MDFLoss(tiny_discriminators()).save(tmp_path/'good.safetensors')
    def forbidden(*a, **k): raise AssertionError('unpickling during a weight load')
    monkeypatch.setattr(pickle, 'load', forbidden); monkeypatch.setattr(pickle, 'loads', forbidden)
    monkeypatch.setattr(pickle, 'Unpickler', forbidden); monkeypatch.setattr(torch, 'load', forbidden)
    MDFLoss.load(good)
    for name in MDFLoss.available(): MDFLoss.from_pretrained(name)
