"""Reliability, security and scale-out (issue 7): tests that try to break the package.

1. hostile and broken files: weights and images, each refused with an error that names the file and the problem;
2. property-based tests (hypothesis) of MDFLoss over shapes, dtypes, value ranges and NaN/Inf placements;
3. interruptions and disk: atomic writes, SIGKILL at random moments (weight files, phase 1, restoration), a full disk;
4. scale-out: DistributedDataParallel on 2 processes (gloo, 127.0.0.1), torch.compile, autocast;
5. CLI hygiene: every `mdf-loss` subcommand fails with exit code 2 and one line; `--debug` shows the traceback;
6. no code path unpickles untrusted data.

Helpers that run in other processes live in reliability_workers.py and reliability_ddp.py beside this file.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import hashlib
import io
import json
import multiprocessing as mp
import os
import pickle
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
import warnings
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings, strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load as st_load_bytes, save as st_save_bytes

from conftest import ROOT
from mdf_loss import MDFLoss
from mdf_loss.core import load_image
from mdf_loss.loss import MODES
from mdf_loss.weights import (LEGACY_MAGIC, LEGACY_PROTOCOL, META_KEY, UnsafePickleError, WeightFileError,
                              import_official, read_weights, write_weights)
from reliability_workers import tiny_discriminators, tiny_loss

HERE = Path(__file__).parent
CORE_PY = str(Path('mdf_loss') / 'core.py')
KILL_SEED = int(os.environ.get('MDF_LOSS_KILL_SEED', '7'))   # the random kill moments; set it to replay a failure


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


# =====================================================================================================================
# 1. Hostile and broken files
# =====================================================================================================================

# --- weights: .safetensors ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def good_weights(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp('weights') / 'good.safetensors'
    MDFLoss(tiny_discriminators((8, 8, 8)), meta={'task': 'denoise'}).save(p)
    return p


def _variant(good: Path, dst: Path, meta_fn=None, tensor_fn=None) -> Path:
    "A copy of `good` with its metadata dict and/or tensors changed."
    tensors = st_load_bytes(good.read_bytes())
    with safe_open(str(good), 'pt') as f: raw = f.metadata()
    if meta_fn: raw = meta_fn(dict(raw))
    if tensor_fn: tensors = tensor_fn(dict(tensors))
    dst.write_bytes(st_save_bytes(tensors, metadata=raw)); return dst


def _meta(**changes):
    "A metadata change: keys set to values, or removed where the value is `...`."
    def fn(raw):
        m = json.loads(raw[META_KEY])
        for k, v in changes.items():
            if v is ...: m.pop(k, None)
            else: m[k] = v
        return {META_KEY: json.dumps(m)}
    return fn


def _header(good: bytes) -> tuple[int, dict]:
    n = struct.unpack('<Q', good[:8])[0]; return n, json.loads(good[8:8 + n])


def _with_header(good: bytes, change) -> bytes:
    "The file with its JSON header edited by `change(header)` and the data kept (for edits safetensors' writer refuses)."
    n, h = _header(good); change(h)
    text = json.dumps(h).encode(); text += b' '*(-len(text) % 8)
    return struct.pack('<Q', len(text)) + text + good[8 + n:]


def _set_shape(h):
    h['0.head.conv.weight']['shape'] = [4, 3, 6, 3]   # same byte count, other shape


BROKEN_BYTES = {   # name: (bytes from the good file, words the error must contain)
    'empty file': (lambda g: b'', 'truncated or corrupt'),
    'truncated to 4 bytes': (lambda g: g[:4], 'truncated or corrupt'),
    'truncated after the length': (lambda g: g[:8], 'truncated or corrupt'),
    'truncated in the header': (lambda g: g[:8 + _header(g)[0]//2], 'truncated or corrupt'),
    'truncated after the header': (lambda g: g[:8 + _header(g)[0]], 'truncated or corrupt'),
    'truncated in the data': (lambda g: g[:len(g)//2 + 5], 'truncated or corrupt'),
    'last byte missing': (lambda g: g[:-1], 'truncated or corrupt'),
    'header length 2**62': (lambda g: struct.pack('<Q', 2**62) + g[8:], 'truncated or corrupt'),
    'header not JSON': (lambda g: g[:8] + b'{' + b'x'*(_header(g)[0] - 1) + g[8 + _header(g)[0]:], 'truncated or corrupt'),
    'random bytes': (lambda g: bytes(random.Random(0).randrange(256) for _ in range(len(g))), 'truncated or corrupt'),
    'a PNG file': (lambda g: b'\x89PNG\r\n\x1a\n' + b'\0'*64, 'truncated or corrupt'),
    'a zip (torch.save) file': (lambda g: b'PK\x03\x04' + b'\0'*200, 'truncated or corrupt'),
    'tensor offsets overlap the header': (lambda g: _with_header(g, lambda h: h['0.tail.bias'].update(data_offsets=[0, 4])),
                                          'truncated or corrupt'),
    'tensor shape edited in the header': (lambda g: _with_header(g, _set_shape), "'0.head.conv.weight' has shape (4, 3, 6, 3)"),
    'tensor dtype edited in the header': (lambda g: _with_header(g, lambda h: h['0.tail.bias'].update(dtype='F64')),
                                          'truncated or corrupt'),
}


@pytest.mark.parametrize('case', list(BROKEN_BYTES))
def test_broken_weight_file_bytes(case, good_weights, tmp_path):
    make, words = BROKEN_BYTES[case]
    p = tmp_path / 'broken.safetensors'; p.write_bytes(make(good_weights.read_bytes()))
    with pytest.raises(WeightFileError) as e: MDFLoss.load(p)
    assert str(p) in str(e.value) and words in str(e.value), str(e.value)


BROKEN_META = {   # name: (metadata change, tensor change, words the error must contain)
    'no metadata at all': (lambda r: {}, None, "no 'mdf_loss' metadata"),
    'metadata of another tool': (lambda r: {'format': 'pt'}, None, "no 'mdf_loss' metadata"),
    'metadata not JSON': (lambda r: {META_KEY: '{not json'}, None, 'not valid JSON'),
    'metadata a JSON list': (lambda r: {META_KEY: '[1, 2]'}, None, 'must be a JSON object'),
    'format_version missing': (_meta(format_version=...), None, "integer 'format_version'"),
    'format_version a string': (_meta(format_version='1'), None, "integer 'format_version'"),
    'newer format version': (_meta(format_version=2), None, 'newer than this mdf_loss reads (1); upgrade mdf_loss'),
    'widths missing': (_meta(widths=...), None, "valid 'widths'"),
    'widths empty': (_meta(widths=[]), None, 'non-empty list of positive integers'),
    'widths negative': (_meta(widths=[8, -8, 8]), None, 'non-empty list of positive integers'),
    'widths strings': (_meta(widths=['8', '8', '8']), None, 'non-empty list of positive integers'),
    'num_layer missing': (_meta(num_layer=...), None, "valid 'num_layer'"),
    'num_layer 2': (_meta(num_layer=2), None, 'impossible discriminator'),
    'kernel_size 0': (_meta(kernel_size=0), None, 'impossible discriminator'),
    'kernel_size a float': (_meta(kernel_size=3.0), None, "valid 'kernel_size'"),
    'width differs from the tensors': (_meta(widths=[8, 16, 8]), None, "'1.head.conv.weight' has shape (8, 3, 3, 3), but the metadata implies (16, 3, 3, 3)"),
    'more discriminators than tensors': (_meta(widths=[8]*4), None, "lacks tensor '3.head.conv.weight'"),
    'fewer discriminators than tensors': (_meta(widths=[8, 8]), None, 'holds tensors its metadata does not describe'),
    'num_layer differs from the tensors': (_meta(num_layer=6), None, "lacks tensor '0.body.3.conv.weight'"),
    'kernel_size differs from the tensors': (_meta(kernel_size=5), None, 'but the metadata implies (8, 3, 5, 5)'),
    # a hostile file must not make the reader allocate what it claims: shapes are checked on the meta device first
    'width 10**7 (no allocation)': (_meta(widths=[10**7]*3), None, 'the metadata implies (10000000, 3, 3, 3)'),
    'num_layer 10**9 (no allocation)': (_meta(num_layer=10**9), None, 'more layers than the'),
    'kernel_size 10**6 (no allocation)': (_meta(kernel_size=10**6), None, 'the metadata implies (8, 3, 1000000, 1000000)'),
    'a tensor missing': (None, lambda t: {k: v for k, v in t.items() if k != '2.tail.bias'}, "lacks tensor '2.tail.bias'"),
    'a tensor with another shape': (None, lambda t: {**t, '1.tail.weight': torch.zeros(1, 8, 3, 2)}, "'1.tail.weight' has shape (1, 8, 3, 2)"),
    'a scalar where a weight was': (None, lambda t: {**t, '0.tail.weight': torch.tensor(1.0)}, "'0.tail.weight' has shape ()"),
    'a NaN weight': (None, lambda t: {**t, '0.tail.bias': torch.tensor([float('nan')])}, 'NaN or Inf'),
    'an Inf BatchNorm variance': (None, lambda t: {**t, '1.head.norm.running_var': torch.full((8,), float('inf'))}, 'NaN or Inf'),
    'an extra tensor': (None, lambda t: {**t, 'payload': torch.zeros(3)}, "does not describe: ['payload']"),
}


@pytest.mark.parametrize('case', list(BROKEN_META))
def test_broken_weight_metadata(case, good_weights, tmp_path):
    meta_fn, tensor_fn, words = BROKEN_META[case]
    p = _variant(good_weights, tmp_path / 'broken.safetensors', meta_fn, tensor_fn)
    t0 = time.perf_counter()
    with pytest.raises(WeightFileError) as e: MDFLoss.load(p)
    assert str(p) in str(e.value) and words in str(e.value), str(e.value)
    assert time.perf_counter() - t0 < 5, 'refusing a hostile file must be quick'


def test_weight_paths_that_are_not_files(good_weights, tmp_path):
    with pytest.raises(IsADirectoryError, match='is a directory'): MDFLoss.load(tmp_path)
    with pytest.raises(FileNotFoundError, match='does not exist'): MDFLoss.load(tmp_path / 'missing.safetensors')
    (tmp_path / 'link').symlink_to(tmp_path)
    with pytest.raises(IsADirectoryError): MDFLoss.load(tmp_path / 'link')
    os.mkfifo(tmp_path / 'fifo')   # reading a FIFO (or /dev/zero) would block or never end: refused up front
    with pytest.raises(WeightFileError, match='not a regular file'): MDFLoss.load(tmp_path / 'fifo')
    if Path('/dev/zero').exists():
        with pytest.raises(WeightFileError, match='not a regular file'): MDFLoss.load('/dev/zero')
    with pytest.raises(IsADirectoryError, match='is a directory'): MDFLoss(tiny_discriminators()).save(tmp_path)
    # the good file still loads, unchanged by all this
    assert len(MDFLoss.load(good_weights).discriminators) == 3


def test_good_file_round_trips_exactly(good_weights, tmp_path):
    loss = MDFLoss.load(good_weights)
    again = MDFLoss.load(loss.save(tmp_path / 'again.safetensors'))
    for k, v in loss.state_dict().items(): assert torch.equal(v, again.state_dict()[k]), k
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.equal(loss(x, y), again(x, y))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       truncate=st.none() | st.integers(0, 10**6))
def test_fuzzed_weight_files_load_or_fail_cleanly(cuts, truncate, good_weights, tmp_path):
    "Random byte changes and truncations: the file loads (a change in the tensor data) or fails with WeightFileError."
    b = bytearray(good_weights.read_bytes())
    for pos, value in cuts: b[pos % len(b)] = value
    if truncate is not None: b = b[:truncate % len(b)]
    p = tmp_path / 'fuzzed.safetensors'; p.write_bytes(bytes(b))
    try: MDFLoss.load(p)
    except WeightFileError as e: assert str(p) in str(e)


# --- weights: the authors' legacy pickles ---------------------------------------------------------------------------

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
    loss = import_official(p, task='test')
    assert [d.width for d in loss.discriminators] == [4, 8]
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = sum(((a - b)**2).mean() for d in ds for a, b in zip(*(
            [d.head(t), d.body(d.head(t)), d.tail(d.body(d.head(t)))] for t in (x, y))))
    torch.testing.assert_close(loss(x, y), ref, rtol=1e-5, atol=0)


def _legacy_parts(obj, keys=None, magic=LEGACY_MAGIC, protocol=LEGACY_PROTOCOL, sys_info=None, pickle_protocol=2) -> bytes:
    "A legacy torch.save layout (magic, protocol, system info, object, storage keys) around `obj`, written by hand."
    buf = io.BytesIO()
    for part in (magic, protocol, sys_info or {'little_endian': True}, obj, [] if keys is None else keys):
        pickle.dump(part, buf, protocol=pickle_protocol)
    return buf.getvalue()


class _Marker:
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


EVIL = {   # the payload, and the end of the global's name that the error must quote (protocol 2 writes Python 2 module names)
    'os.system': ".system'", 'subprocess': ".call'", 'eval': ".eval'", 'exec': ".exec'", 'builtins.open': ".open'",
    'torch.load': "torch.serialization.load'", 'getattr': ".getattr'",
}


@pytest.mark.parametrize('where', ['payload', 'inside a module record', 'as the magic number'])
@pytest.mark.parametrize('call', list(EVIL))
def test_legacy_pickle_with_unexpected_global_is_refused_and_nothing_runs(call, where, tmp_path):
    marker = tmp_path / 'pwned'
    evil = _Marker(call, marker)
    if where == 'payload': data = _legacy_parts([evil])
    elif where == 'as the magic number': data = _legacy_parts([], magic=evil)
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
        p = tmp_path / f'evil{proto}.pth'; p.write_bytes(_legacy_parts([_Marker('os.system', marker)], pickle_protocol=proto))
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
    'other magic number': (lambda g: _legacy_parts([], magic=12345), WeightFileError, 'not a legacy torch.save file'),
    'other protocol': (lambda g: _legacy_parts([], protocol=7), WeightFileError, 'unsupported legacy protocol 7'),
    'big-endian': (lambda g: _legacy_parts([], sys_info={'little_endian': False}), WeightFileError, 'little-endian'),
    'not a list': (lambda g: _legacy_parts({'a': 1}), WeightFileError, 'does not hold a list of discriminators'),
    'empty list': (lambda g: _legacy_parts([]), WeightFileError, 'does not hold a list of discriminators'),
    'a list of numbers': (lambda g: _legacy_parts([1, 2]), WeightFileError, 'not a SinGAN WDiscriminator'),
    'storage table not a list': (lambda g: _legacy_parts([1], keys=5), WeightFileError, 'storage table is not a list'),
    'a storage listed but never used': (lambda g: _legacy_parts([1], keys=['7']), WeightFileError, "storage '7' is listed but never used"),
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


# --- images -----------------------------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)


def _png(w: int, h: int, depth: int, colour: int, rows: bytes) -> bytes:
    "A PNG written by hand (Pillow cannot write 16-bit colour, zero sizes or lying headers)."
    return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, colour, 0, 0, 0))
            + _png_chunk(b'IDAT', zlib.compress(rows)) + _png_chunk(b'IEND', b''))


def _photo(h=20, w=30) -> Image.Image:
    "An RGB image with structure in both directions, so a rotation or flip shows."
    yy, xx = np.mgrid[:h, :w]
    return Image.fromarray(np.stack([xx*255//w, yy*255//h, (xx*yy) % 256], -1).astype(np.uint8))


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO(); img.save(buf, format=fmt, **kw); return buf.getvalue()


BROKEN_IMAGES = {   # name: (file bytes, words in the error)
    'corrupt PNG (signature only)': (lambda: b'\x89PNG\r\n\x1a\n' + b'\0'*40, 'could not be decoded'),
    'truncated PNG': (lambda: _bytes(_photo(64, 64), 'PNG')[:300], 'could not be decoded'),
    'PNG with a bad CRC': (lambda: (lambda b: b[:29] + b'\0\0\0\0' + b[33:])(_bytes(_photo(), 'PNG')), 'could not be decoded'),
    'corrupt JPEG (markers only)': (lambda: b'\xff\xd8\xff\xe0' + b'\0'*60, 'could not be decoded'),
    'truncated JPEG': (lambda: (lambda b: b[:len(b)//2])(_bytes(_photo(64, 64), 'JPEG')), 'truncated'),
    'JPEG without its frame header': (lambda: (lambda b: b[:b.index(b'\xff\xc0')] + b[b.index(b'\xff\xc0') + 19:])(_bytes(_photo(), 'JPEG')),
                                      'could not be decoded'),
    'zero-size file': (lambda: b'', 'is empty (0 bytes)'),
    'PNG of width 0': (lambda: _png(0, 4, 8, 2, b''), 'could not be decoded'),
    'PNG of height 0': (lambda: _png(4, 0, 8, 2, b''), 'could not be decoded'),
    'a text file': (lambda: b'hello, not an image\n', 'could not be decoded'),
    'a weight file': (lambda: st_save_bytes({'a': torch.zeros(3)}), 'could not be decoded'),
    # 10**10 pixels in 100 bytes: Pillow's limit (kept as it is) stops it before any decoding
    'decompression bomb': (lambda: _png(100_000, 100_000, 8, 2, b'\0'*10), 'too large to decode safely'),
}


@pytest.mark.parametrize('case', list(BROKEN_IMAGES))
def test_broken_images(case, tmp_path):
    make, words = BROKEN_IMAGES[case]
    p = tmp_path / 'broken.png'; p.write_bytes(make())
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError) as e: load_image(p)
    assert str(p) in str(e.value) and words in str(e.value), str(e.value)
    assert Image.MAX_IMAGE_PIXELS == limit and limit is not None, "Pillow's decompression-bomb limit must be kept"
    if case == 'decompression bomb': assert 'PIL.Image.MAX_IMAGE_PIXELS' in str(e.value)   # and how to lift it, if trusted


def test_bomb_limit_is_pillows_own(tmp_path):
    "Over twice Image.MAX_IMAGE_PIXELS is refused with our message; a user who raises the limit gets the image."
    p = tmp_path / 'big.png'; _photo(60, 60).save(p)
    with mock.patch.object(Image, 'MAX_IMAGE_PIXELS', 1000):
        with pytest.raises(ValueError, match='too large to decode safely'): load_image(p)
    assert load_image(p).shape == (1, 3, 60, 60)
    with pytest.raises(IsADirectoryError): load_image(tmp_path)
    with pytest.raises(FileNotFoundError): load_image(tmp_path / 'missing.png')


def _rgb16() -> tuple[bytes, np.ndarray]:
    arr = (np.arange(4*5*3).reshape(4, 5, 3)*1111 % 65536).astype('>u2')
    return _png(5, 4, 16, 2, b''.join(b'\0' + arr[i].tobytes() for i in range(4))), arr


CONVERTED = {   # name: (file bytes, words in the warning, expected 1 x 3 x H x W tensor or None)
    '8-bit grayscale': (lambda: _bytes(Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)*5, 'L'), 'PNG'), 'grayscale image converted',
                        lambda: torch.from_numpy(np.arange(48).reshape(6, 8)*5/255.).float().expand(1, 3, 6, 8)),
    '16-bit grayscale': (lambda: _bytes(Image.fromarray((np.arange(48).reshape(6, 8)*1300).astype(np.uint16)), 'PNG'), '16-bit grayscale',
                         lambda: torch.from_numpy(np.round(np.arange(48).reshape(6, 8)*1300/65535*255)/255).float().expand(1, 3, 6, 8)),
    '16-bit RGB': (lambda: _rgb16()[0], '16-bit-per-channel RGB image reduced to 8 bits',
                   lambda: torch.from_numpy((_rgb16()[1].astype(np.int64) >> 8)/255.).float().permute(2, 0, 1)[None]),
    'palette': (lambda: _bytes(_photo().convert('P'), 'PNG'), 'palette image converted', None),
    'palette with transparency': (lambda: _bytes(_photo().convert('P'), 'PNG', transparency=0), 'composited onto white', None),
    'RGBA': (lambda: _bytes(Image.new('RGBA', (4, 3), (255, 0, 0, 0)), 'PNG'), 'RGBA image with transparency composited onto white',
             lambda: torch.ones(1, 3, 3, 4)),
    'half-transparent RGBA': (lambda: _bytes(Image.new('RGBA', (4, 3), (0, 0, 0, 128)), 'PNG'), 'composited onto white',
                              lambda: torch.full((1, 3, 3, 4), 127/255)),
    'grayscale with alpha': (lambda: _bytes(Image.new('LA', (4, 3), (0, 255)), 'PNG'), 'LA image with transparency', lambda: torch.zeros(1, 3, 3, 4)),
    '1-bit': (lambda: _bytes(Image.new('1', (4, 3), 1), 'PNG'), '1-bit image converted', lambda: torch.ones(1, 3, 3, 4)),
    'CMYK JPEG': (lambda: _bytes(Image.new('CMYK', (8, 8), (0, 255, 0, 0)), 'JPEG', quality=100), 'CMYK image converted', None),
    'float TIFF in [0,1]': (lambda: _bytes(Image.fromarray(np.full((4, 4), 0.5, np.float32), 'F'), 'TIFF'), 'floating-point grayscale',
                            lambda: torch.full((1, 3, 4, 4), 128/255)),
}


@pytest.mark.parametrize('case', list(CONVERTED))
def test_converted_images_warn(case, tmp_path):
    make, words, expected = CONVERTED[case]
    p = tmp_path / 'image'; p.write_bytes(make())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); x = load_image(p)
    messages = [str(m.message) for m in w]
    assert any(words in m and str(p) in m for m in messages), messages
    assert x.dtype == torch.float32 and x.ndim == 4 and x.shape[1] == 3 and 0 <= x.min() and x.max() <= 1
    if expected is not None: torch.testing.assert_close(x, expected(), atol=1e-6, rtol=0)
    if case == 'CMYK JPEG': assert x[0, :, 4, 4].tolist() == pytest.approx([1, 0, 1], abs=0.02)   # magenta


def test_rgb_8bit_loads_silently(tmp_path):
    p = tmp_path / 'a.png'; _photo().save(p)
    with warnings.catch_warnings():
        warnings.simplefilter('error'); x = load_image(p)
    assert torch.equal(x, torch.from_numpy(np.asarray(_photo())/np.float32(255)).permute(2, 0, 1)[None])


@pytest.mark.parametrize('orientation,turns', [(1, 0), (3, 2), (6, -1), (8, 1)])
@pytest.mark.parametrize('fmt', ['JPEG', 'PNG'])
def test_exif_orientation_is_applied(orientation, turns, fmt, tmp_path):
    "A camera's orientation tag turns the loaded tensor as a photo viewer does: 6 = 90 degrees clockwise, 8 = counter-clockwise."
    img = _photo(20, 30)
    exif = Image.Exif(); exif[0x0112] = orientation   # ExifTags.Base.Orientation
    plain, tagged = tmp_path / f'plain.{fmt}', tmp_path / f'tagged.{fmt}'
    img.save(plain, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
    img.save(tagged, format=fmt, exif=exif, **({'quality': 95} if fmt == 'JPEG' else {}))
    with Image.open(tagged) as check: assert check.getexif()[0x0112] == orientation
    want = torch.rot90(load_image(plain), turns, (2, 3))   # same pixels stored; rot90 k=1 is counter-clockwise
    got = load_image(tagged)
    assert got.shape == want.shape == ((1, 3, 30, 20) if turns % 2 else (1, 3, 20, 30))
    assert torch.equal(got, want)
    with open(tagged, 'rb') as f: assert torch.equal(load_image(f), want)   # a file object too


def test_mirrored_exif_orientations(tmp_path):
    img = _photo(20, 30); plain = load_image(io.BytesIO(_bytes(img, 'PNG')))
    for orientation, fn in [(2, lambda x: x.flip(3)), (4, lambda x: x.flip(2)), (5, lambda x: torch.rot90(x, 1, (2, 3)).flip(2)),
                            (7, lambda x: torch.rot90(x, -1, (2, 3)).flip(2))]:
        exif = Image.Exif(); exif[0x0112] = orientation
        assert torch.equal(load_image(io.BytesIO(_bytes(img, 'PNG', exif=exif))), fn(plain)), orientation


def test_corrupt_exif_keeps_the_picture():
    """A broken EXIF block costs only the orientation, with a warning, not the picture. Found by fuzzing: Pillow's
    exif_transpose raised struct.error on some corrupt tags, which escaped load_image as a crash."""
    from PIL import ImageOps
    img = _photo(16, 24)
    exif = Image.Exif(); exif[0x0112] = 6; exif[0x010f] = 'Camera'
    good = _bytes(img, 'JPEG', exif=exif, quality=95)
    start, rng = good.index(b'Exif\0\0'), random.Random(0)
    found = None
    for _ in range(20_000):   # a deterministic search for a file whose EXIF makes Pillow itself raise
        b = bytearray(good)
        for _ in range(rng.randint(1, 3)): b[rng.randrange(start, start + 120)] = rng.randrange(256)
        try:
            with warnings.catch_warnings(), Image.open(io.BytesIO(bytes(b))) as im:
                warnings.simplefilter('ignore'); im.load(); ImageOps.exif_transpose(im)
        except (OSError, SyntaxError, ValueError): continue   # refused as corrupt: load_image says so
        except Exception: found = bytes(b); break
    if found is None: pytest.skip('no EXIF corruption that breaks this Pillow version was found')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); x = load_image(io.BytesIO(found))
    assert x.shape == (1, 3, 16, 24) and any('EXIF data is corrupt' in str(m.message) for m in w), [str(m.message) for m in w]


# =====================================================================================================================
# 2. Property-based tests of the loss
# =====================================================================================================================

RF = 11   # receptive field of a 5-layer 3x3 discriminator: the smallest side the loss accepts
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
OTHERS = [torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool, torch.complex64]
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else []) + (
    ['mps'] if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available() else [])
SMALL = {}


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny tensors: one thread is faster, and on a shared machine two spinning OpenMP threads can be 100x slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_loss(**kwargs) -> MDFLoss:
    "One cached tiny MDFLoss per set of options (building it folds BatchNorm; calling it is the part under test)."
    key = tuple(sorted(kwargs.items()))
    if key not in SMALL: SMALL[key] = tiny_loss(**kwargs)
    return SMALL[key]


_REF64 = {}


def reference(crit: MDFLoss, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    "Per image, in float64 with the unfolded modules: the reference formula, and the feature energy that bounds round-off."
    if id(crit) not in _REF64: _REF64[id(crit)] = [copy.deepcopy(d).double().cpu() for d in crit.discriminators]
    total = energy = torch.zeros(x.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for d in _REF64[id(crit)][:crit.num_scales]:
            fx, fy = d.features(x.cpu().double()), d.features(y.cpu().double())
            total = total + sum(((a - b)**2).mean((1, 2, 3)) for a, b in zip(fx, fy))
            energy = energy + sum((a**2 + b**2).mean((1, 2, 3)) for a, b in zip(fx, fy))
    return total, energy


def expected_error(x, y):
    "The documented error for (output, target), checked in this order; None where a loss must come back."
    for t in (x, y):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point(): return TypeError
        if t.ndim != 4 or t.shape[1] != 3 or t.shape[0] == 0 or min(t.shape[-2:]) < RF: return ValueError
        if not torch.isfinite(t).all(): return ValueError
        if t.max() > 5 or t.min() < -4: return ValueError   # core.RANGE_LIMIT: an image on the 0-255 scale
    if x.shape != y.shape: return ValueError
    return None


FAULTS = [None]*7 + ['dtype', 'small', 'shape', 'nonfinite', 'range']


@st.composite
def image_pairs(draw):
    "Pairs of tensors as a training loop might pass them: mostly right (about half), else wrong in one or two ways."
    faults = {draw(st.sampled_from(FAULTS)), draw(st.sampled_from(FAULTS*3))} - {None}
    n = draw(st.integers(1, 3))
    h, w = (draw(st.integers(1, RF + 2)), draw(st.integers(1, 36))) if 'small' in faults else (draw(st.integers(RF, 32)), draw(st.integers(RF, 32)))
    dtype = draw(st.sampled_from(OTHERS)) if 'dtype' in faults else draw(st.sampled_from(FLOATS))
    device = draw(st.sampled_from(DEVICES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    ok = st.sampled_from([(0., 1.), (0., 1.), (-0.5, 1.5), (-1., 1.), (-4., 5.), (0.49, 0.51), (1., 1.), (0., 0.)])
    bad = st.sampled_from([(0., 255.), (-6., 0.), (4., 6.), (-300., 300.)])
    (lo_x, hi_x), (lo_y, hi_y) = draw(ok), draw(ok)
    if 'range' in faults:
        if draw(st.booleans()): lo_x, hi_x = draw(bad)
        else: lo_y, hi_y = draw(bad)
    x = lo_x + (hi_x - lo_x)*torch.rand(n, 3, h, w, generator=g)
    y = lo_y + (hi_y - lo_y)*torch.rand(n, 3, h, w, generator=g)
    if draw(st.booleans()): y = x + draw(st.sampled_from([0., 1e-6, 1e-3, 0.1]))*torch.randn(x.shape, generator=g)   # near-identical
    if 'shape' in faults:
        shape = draw(st.sampled_from(['3-d', '5-d', '1 channel', '4 channels', 'empty batch', 'other size', 'other batch']))
        if shape == '3-d': x, y = x[0], y[0]
        elif shape == '5-d': x, y = x[None], y[None]
        elif shape == '1 channel': x, y = x[:, :1], y[:, :1]
        elif shape == '4 channels': x, y = torch.cat([x, x[:, :1]], 1), torch.cat([y, y[:, :1]], 1)
        elif shape == 'empty batch': x, y = x[:0], y[:0]
        elif shape == 'other size': y = y[..., :-1, :]
        elif shape == 'other batch': y = torch.cat([y, y])
    if draw(st.integers(0, 4)) == 0:   # a layout that is fine: channels last, or a strided view
        x = x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
        y = y[..., ::1]
    if 'nonfinite' in faults and x.numel() and y.numel():
        t = x if draw(st.booleans()) else y
        t[np.unravel_index(draw(st.integers(0, t.numel() - 1)), t.shape)] = draw(st.sampled_from([float('nan'), float('inf'), -float('inf')]))
    if dtype.is_floating_point or dtype.is_complex: x, y = x.to(dtype), y.to(dtype)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')   # NaN to int casts
            x, y = [(t*255).nan_to_num(0, 255, 0).clamp(0, 255).to(dtype) for t in (x, y)]
    if dtype.is_floating_point and draw(st.integers(0, 5)) == 0: y = y.to(draw(st.sampled_from(FLOATS)))   # mixed float dtypes
    return x.to(device), y.to(device)


@settings(max_examples=300, deadline=None)
@given(pair=image_pairs(), reduction=st.sampled_from(['mean', 'sum', 'none']), mode=st.sampled_from(MODES))
def test_loss_is_correct_or_raises_the_documented_error(pair, reduction, mode):
    """Any input: a finite loss (in 'exact' mode equal to the reference formula), or the documented ValueError/TypeError
    raised by the input check, never an error from deep inside torch."""
    x, y = pair
    crit = small_loss(reduction=reduction, mode=mode)
    want = expected_error(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # the once-only "stray outside [0,1]" warning: tested below
        try: got = crit(x, y)
        except (ValueError, TypeError) as e:
            assert type(e) is want, f'{type(e).__name__}: {e}, expected {want}'
            where = traceback.extract_tb(e.__traceback__)[-1].filename
            assert where.endswith(CORE_PY), f'raised inside {where}, not by the input check: {e}'
            assert len(str(e)) > 20
            event(f'{type(e).__name__}'); return
    event(f'finite loss, {x.dtype}'); assert want is None, f'expected {want.__name__} for shapes {tuple(x.shape)}, {tuple(y.shape)}, dtypes {x.dtype}, {y.dtype}'
    assert got.dtype == x.dtype and got.device == x.device
    assert got.shape == ((x.shape[0],) if reduction == 'none' else ())
    assert torch.isfinite(got).all() and (got >= 0).all()
    if mode != 'exact': return   # other modes trade exactness for speed: their accuracy is measured in nbs/04_loss
    ref, energy = reference(crit, x, y)
    ref = {'mean': ref.mean(), 'sum': ref.sum(), 'none': ref}[reduction]
    bound = {'mean': energy.mean(), 'sum': energy.sum(), 'none': energy}[reduction]
    eps = max(torch.finfo(x.dtype).eps, torch.finfo(y.dtype).eps, torch.finfo(torch.float32).eps)   # folded weights are float32
    err = (got.cpu().double() - ref).abs()
    assert (err <= 4*eps*bound + 1e-30).all(), (got, ref, err/bound)


WEIGHT = st.just(0.0) | st.floats(1e-3, 2.0)   # a scale or layer weight: off, or a usable value


@st.composite
def valid_pairs(draw):
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(RF, 28)), draw(st.integers(RF, 28))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    lo, hi = draw(st.sampled_from([(0., 1.), (-0.5, 1.5), (0.3, 0.7)]))
    x = (lo + (hi - lo)*torch.rand(n, 3, h, w, generator=g)).to(dtype)
    y = (lo + (hi - lo)*torch.rand(n, 3, h, w, generator=g)).to(dtype)
    return x.to(draw(st.sampled_from(DEVICES))), y


@settings(max_examples=30, deadline=None)
@given(pair=valid_pairs(), weights=st.none() | st.tuples(st.lists(WEIGHT, min_size=2, max_size=2), st.lists(WEIGHT, min_size=3, max_size=3)),
       mode=st.sampled_from(MODES))
@example(pair=(torch.full((1, 3, RF, RF), 0.5), torch.zeros(1, 3, RF, RF)), weights=None, mode='exact')
def test_loss_properties(pair, weights, mode):
    "Symmetric, zero for identical inputs, non-negative, 'none' averages to 'mean', finite gradient to the output only."
    x, y = pair; y = y.to(x.device)
    kw = dict(mode=mode) if weights is None else dict(scale_weights=weights[0], layer_weights=weights[1], mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        crit, per_image, total = (tiny_loss(**kw, reduction=r) for r in ('mean', 'none', 'sum'))
        value = crit(x, y)
        torch.testing.assert_close(value, crit(y, x), rtol=1e-6, atol=0)
        assert crit(x, x).item() == 0 and crit(x, x.clone()).item() == 0
        assert value >= 0 and (per_image(x, y) >= 0).all()
        torch.testing.assert_close(per_image(x, y).mean(), value, rtol=1e-6, atol=0)
        torch.testing.assert_close(per_image(x, y).sum(), total(x, y), rtol=1e-6, atol=0)
        out, target = x.clone().requires_grad_(), y.clone().requires_grad_()
        crit(out, target).backward()
        assert torch.isfinite(out.grad).all() and (out.grad.abs().sum() > 0) == (value > 0)   # zero only with zero weights
        assert target.grad is None, 'the target side must be computed without autograd'
        same = x.clone().requires_grad_(); crit(same, x).backward()
        assert torch.isfinite(same.grad).all() and same.grad.abs().max() == 0   # at the minimum the gradient is zero


def test_official_loss_properties():
    "The same properties with a published set (slower: 9 discriminators, widths up to 128), and the reference formula."
    crit = MDFLoss.from_pretrained('official-sisr')
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 40, generator=g), torch.rand(2, 3, 32, 40, generator=g)
    value = crit(x, y)
    assert value > 0 and torch.isfinite(value)
    torch.testing.assert_close(value, crit(y, x), rtol=1e-6, atol=0)
    assert crit(x, x).item() == 0
    ref, _ = reference(crit, x, y)
    torch.testing.assert_close(value.double(), ref.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(MDFLoss.from_pretrained('official-sisr', reduction='none')(x, y).mean(), value, rtol=1e-6, atol=0)
    out = x.clone().requires_grad_(); crit(out, y).backward()
    assert torch.isfinite(out.grad).all() and out.grad.abs().sum() > 0
    for dtype in (torch.bfloat16, torch.float16):
        low = crit(x.to(dtype), y.to(dtype))
        assert low.dtype == dtype and torch.isfinite(low) and abs(low.double() - ref.mean()) < 0.05*ref.mean()


def test_stray_values_warn_once_and_pass():
    "A network's output a little outside [0,1] passes with one warning per loss; far outside (0-255) is refused."
    crit = tiny_loss()
    x = torch.rand(1, 3, 16, 16)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        for _ in range(3): crit(x*2 - 0.5, x)
    assert len([m for m in w if 'stray outside [0,1]' in str(m.message)]) == 1
    with pytest.raises(ValueError, match='divide by 255'): crit(x*255, x)
    with pytest.raises(ValueError, match='NaN or Inf'): crit(x, x.clone().fill_(float('nan')))
    with pytest.raises(TypeError, match='x.float\\(\\)/255'): crit((x*255).byte(), x)


# =====================================================================================================================
# 3. Interruptions and disk
# =====================================================================================================================

def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob('*') if p.name.endswith('.tmp'))


def test_weight_writes_are_atomic(tmp_path):
    "write_weights writes a temporary file beside the target, fsyncs it, then renames it over the target."
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    def fsync(fd): calls.append(('fsync', os.readlink(f'/proc/self/fd/{fd}') if Path('/proc/self/fd').exists() else fd)); real_fsync(fd)
    def replace(a, b): calls.append(('replace', str(a), str(b))); real_replace(a, b)
    p = tmp_path / 'loss.safetensors'
    with mock.patch('os.fsync', fsync), mock.patch('os.replace', replace):
        write_weights(tiny_discriminators(), p)
    kinds = [c[0] for c in calls]
    assert kinds[:2] == ['fsync', 'replace'], calls
    tmp = calls[1][1]
    assert Path(tmp).parent == tmp_path and Path(tmp).name.endswith('.tmp') and calls[1][2] == str(p)
    if isinstance(calls[0][1], str): assert calls[0][1] == tmp   # the fsync was of the temporary file itself
    assert calls[2:] and calls[2][0] == 'fsync', 'the folder is fsynced too, so the rename survives a power cut'
    assert _temp_files(tmp_path) == []


AUDIT = {'on': False, 'opens': [], 'renames': [], 'installed': False}


def _audit_writes():
    "Record every file opened for writing (audit hook 'open') and every rename while AUDIT['on'] is set (hooks stay: install once)."
    if AUDIT['installed']: return
    AUDIT['installed'] = True
    log = AUDIT
    def hook(event, args):
        if not log['on']: return
        if event == 'open':
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in 'wax+')) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
            if writing and isinstance(path, (str, bytes, os.PathLike)): log['opens'].append((str(path), mode))
        elif event == 'os.rename': log['renames'].append((str(args[0]), str(args[1])))
    sys.addaudithook(hook)


def _check_atomic(out: Path, allowed_append=('log.jsonl',)):
    "Every file under `out` was written as a temporary file then renamed, or is an append-only log."
    opened = [(Path(p), m) for p, m in AUDIT['opens'] if Path(p).is_relative_to(out)]
    renamed = {Path(b): Path(a) for a, b in AUDIT['renames'] if Path(b).is_relative_to(out)}
    for p, mode in opened:
        assert p.name.endswith('.tmp') or (p.name in allowed_append and mode == 'a'), f'{p} was opened with mode {mode!r}, not written atomically'
    finals = [p for p in out.rglob('*') if p.is_file() and p.name not in allowed_append]
    assert finals
    for p in finals: assert p in renamed and renamed[p].name.endswith('.tmp'), f'{p} was not renamed into place'


@pytest.mark.skipif(not _has('mdf_loss.adversarial'), reason='phase 1 (mdf_loss.adversarial) is not there yet')
def test_phase1_files_are_written_atomically(tmp_path):
    from mdf_loss.adversarial import TrainConfig, train
    _audit_writes(); AUDIT['on'] = True
    try: train(TrainConfig(max_size=26, iters=2, log_every=1), tmp_path / 'run', progress=False)
    finally: AUDIT['on'] = False
    _check_atomic(tmp_path / 'run')
    assert {p.name for p in (tmp_path / 'run').rglob('*.safetensors')} >= {'loss.safetensors', 'scale_0.safetensors'}


@pytest.mark.skipif(not _has('mdf_loss.restoration'), reason='the restoration trainer is not there yet')
def test_restoration_checkpoints_are_written_atomically(tmp_path):
    from mdf_loss import restoration as R
    from reliability_workers import restoration_setup
    model, loss_fn, sampler = restoration_setup(batch=2)
    _audit_writes(); AUDIT['on'] = True
    try: R.train(model, loss_fn, sampler, 2, checkpoint=tmp_path / 'ck' / 'model.pt', every=1, progress=False)
    finally: AUDIT['on'] = False
    _check_atomic(tmp_path / 'ck', allowed_append=())


# --- SIGKILL at random moments --------------------------------------------------------------------------------------

def _forkserver():
    "A forkserver with torch and the package imported once: each job is a fresh process forked from it in milliseconds."
    ctx = mp.get_context('forkserver')
    ctx.set_forkserver_preload(['torch', 'torch._dynamo', 'tqdm.auto', 'reliability_workers', 'mdf_loss.weights']   # torch.optim imports dynamo: 2 s
                               + [m for m in ('mdf_loss.adversarial', 'mdf_loss.restoration') if _has(m)])
    return ctx


CTX = _forkserver()


def _start(target, *args):
    p = CTX.Process(target=target, args=args, daemon=True); p.start(); return p


def _kill_at(p, delay: float) -> bool:
    "SIGKILL `p` after `delay` s; True if it was still running (a real kill), False if it had finished."
    p.join(delay)
    if p.exitcode is not None: return False
    p.kill(); p.join(10)
    assert p.exitcode in (0, -signal.SIGKILL), p.exitcode
    return p.exitcode == -signal.SIGKILL   # 0: it finished between the wait and the kill


def test_sigkill_while_writing_weights_leaves_old_or_new_file(tmp_path):
    "A process writes weight files in a loop; killed at random moments, the file is always a complete version: the last one it "
    "finished or the one it was writing."
    from reliability_workers import write_forever
    rng = random.Random(KILL_SEED)
    path = tmp_path / 'loss.safetensors'
    write_weights(tiny_discriminators((64, 64)), path, {'counter': 0})
    done = CTX.Value('q', 0, lock=False)
    kills, versions = 0, []
    for _ in range(6):
        p = _start(write_forever, str(path), (64, 64), done)
        finished_before = done.value
        assert _kill_at(p, rng.uniform(0.02, 0.6))
        kills += 1
        ds, meta = read_weights(path)   # loads: never a torn file
        version = meta['counter']
        assert version in (done.value, done.value + 1), (version, done.value)   # the last finished, or the one being written
        assert ds[0].tail.bias.item() == version, 'tensors and metadata of one write, never a mix'
        versions.append((finished_before, version))
        done.value = version
        leftovers = _temp_files(tmp_path)
        assert all(n.startswith('.loss.safetensors.') for n in leftovers), leftovers   # at most a temporary file, never a half target
    assert kills >= 5 and versions[-1][1] > 0, versions
    for n in _temp_files(tmp_path): (tmp_path / n).unlink()


def _phase1_config() -> dict:
    from mdf_loss.adversarial import TrainConfig
    return TrainConfig(max_size=40, iters=8, log_every=4, seed=0).to_dict()   # 2 scales, a few seconds


def _sha(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()


def _log_rows(run: Path) -> list:
    return [{k: v for k, v in json.loads(line).items() if k != 'time'} for line in (run / 'log.jsonl').read_text().splitlines()]


def _check_phase1_state(run: Path, seen: dict):
    "After a kill: every checkpoint present loads, those seen before are unchanged, and none has been lost."
    from mdf_loss.adversarial import read_checkpoint
    ckdir = run / 'checkpoints'
    present = sorted(ckdir.glob('scale_*.safetensors')) if ckdir.exists() else []
    for p in present:
        read_checkpoint(p)
        stamp = (_sha(p), p.stat().st_ino, p.stat().st_mtime_ns)   # same bytes, same file: never rewritten after it was finished
        if p.name in seen: assert stamp == seen[p.name], f'{p.name} changed after it was finished'
        seen[p.name] = stamp
    assert set(seen) == {p.name for p in present}, f'finished checkpoints lost: {set(seen) - {p.name for p in present}}'
    if (run / 'loss.safetensors').exists(): MDFLoss.load(run / 'loss.safetensors')
    if (run / 'config.json').exists(): json.loads((run / 'config.json').read_text())
    return len(present)


def _restoration_state(ck: Path, finished: int) -> int:
    "After a kill: the checkpoint loads and holds at least every step a finished checkpoint held."
    from mdf_loss.restoration import load_checkpoint
    if not ck.exists():
        assert finished == 0, f'checkpoint of step {finished} lost'; return 0
    state = load_checkpoint(ck)
    assert state['step'] >= finished and len(state['history']) == state['step'], (state['step'], finished)
    return state['step']


def _kill_resume_loop(start, check, verify, seconds: float, runs: int, rng, log: list):
    """For each of `runs` fresh runs: start it and SIGKILL it at a random moment (spread over early, middle and late by
    `seconds`, the uninterrupted run's time), `check` what it left, resume and kill once more at random, then resume to
    the end and `verify` the result."""
    for r in range(runs):
        delays = [seconds*(r + rng.random())/runs, rng.uniform(0.05, seconds)]   # stratified first kill, then anywhere
        for attempt in range(len(delays) + 1):
            p = start(r)
            if attempt == len(delays) or not _kill_at(p, delays[attempt]):
                p.join(300); assert p.exitcode == 0, f'run {r}: the resumed run failed (exit code {p.exitcode})'
                break
            log.append(dict(run=r, at=round(delays[attempt], 2), **check(r)))
        verify(r)


@pytest.mark.skipif(not (_has('mdf_loss.adversarial') and _has('mdf_loss.restoration')),
                    reason='needs phase 1 (mdf_loss.adversarial) and the restoration trainer (mdf_loss.restoration)')
def test_kill_and_resume_phase1_and_restoration(tmp_path):
    """SIGKILL phase 1 and a restoration run at random moments (>= 5 kills in all), resuming after each: every kill leaves
    loadable checkpoints with no finished work lost, and every resumed run ends with the uninterrupted run's result."""
    from reliability_workers import phase1_run, restoration_run
    from mdf_loss.adversarial import same_weights
    from safetensors.torch import load_file
    rng = random.Random(KILL_SEED)
    cfg = _phase1_config()
    counter = CTX.Value('q', 0, lock=False)
    t_start = time.perf_counter()

    # the uninterrupted runs, in the same kind of process: their time spreads the kills, their result is the reference
    t0 = time.perf_counter()
    p = _start(phase1_run, str(tmp_path / 'p1-ref'), cfg, counter); p.join(300); assert p.exitcode == 0
    t_p1 = time.perf_counter() - t0
    reference_p1 = tmp_path / 'p1-ref' / 'loss.safetensors'
    steps, every = 30, 2
    t0 = time.perf_counter()
    p = _start(restoration_run, str(tmp_path / 'r-ref.pt'), steps, every, counter, str(tmp_path / 'r-ref.safetensors'))
    p.join(300); assert p.exitcode == 0
    t_r = time.perf_counter() - t0
    reference_r = load_file(tmp_path / 'r-ref.safetensors')
    with safe_open(str(tmp_path / 'r-ref.safetensors'), 'pt') as f: reference_history = json.loads(f.metadata()['history'])

    kills = {'phase 1': [], 'restoration': []}
    seen = {}
    def p1_start(r):
        counter.value = 0; seen.setdefault(r, {})
        return _start(phase1_run, str(tmp_path / f'p1-{r}'), cfg, counter)
    def p1_check(r):
        before = len(seen[r])
        n = _check_phase1_state(tmp_path / f'p1-{r}', seen[r])
        assert n >= before + counter.value, f'{counter.value} scales finished by the killed process, {n - before} new checkpoints'
        return dict(scales_done=n)
    def p1_verify(r):
        run = tmp_path / f'p1-{r}'
        _check_phase1_state(run, seen[r])
        assert same_weights(run / 'loss.safetensors', reference_p1), 'the resumed run differs from the uninterrupted one'
        assert _log_rows(run) == _log_rows(tmp_path / 'p1-ref'), 'the log differs from the uninterrupted run'
    _kill_resume_loop(p1_start, p1_check, p1_verify, t_p1, 3, rng, kills['phase 1'])

    finished = {}
    def r_start(r):
        counter.value = finished.setdefault(r, 0)
        return _start(restoration_run, str(tmp_path / f'r-{r}.pt'), steps, every, counter, str(tmp_path / f'r-{r}.safetensors'))
    def r_check(r):
        step = _restoration_state(tmp_path / f'r-{r}.pt', counter.value)
        assert step >= finished[r], f'the checkpoint went back from step {finished[r]} to {step}'
        finished[r] = step
        return dict(step=step)
    def r_verify(r):
        final = load_file(tmp_path / f'r-{r}.safetensors')
        for k, v in reference_r.items(): assert torch.equal(final[k], v), f'{k} differs from the uninterrupted run'
        with safe_open(str(tmp_path / f'r-{r}.safetensors'), 'pt') as f: assert json.loads(f.metadata()['history']) == reference_history
    _kill_resume_loop(r_start, r_check, r_verify, t_r, 3, rng, kills['restoration'])

    total = len(kills['phase 1']) + len(kills['restoration'])
    print(f'\nkills (seed {KILL_SEED}): {json.dumps(kills)}\nuninterrupted: phase 1 {t_p1:.1f} s, restoration {t_r:.1f} s; '
          f'whole test {time.perf_counter() - t_start:.1f} s')
    assert total >= 5 and kills['phase 1'] and kills['restoration'], kills


# --- a full disk ------------------------------------------------------------------------------------------------------

def _fail_in_write(errno_=28):
    "os.fdopen returning a file whose write stores half the data, then fails as a full disk does."
    real = os.fdopen
    class Half(io.FileIO):
        def write(self, b):
            super().write(bytes(b)[:len(b)//2]); raise OSError(errno_, os.strerror(errno_))
    def fdopen(fd, mode='r', *a, **k):
        return Half(fd, 'wb') if 'w' in mode else real(fd, mode, *a, **k)
    return mock.patch('os.fdopen', fdopen)


INJECTED = {   # where the disk fills up: a patch that makes that step fail
    'creating the temporary file': lambda: mock.patch('tempfile.mkstemp', side_effect=OSError(28, 'No space left on device')),
    'writing (half written)': _fail_in_write,
    'fsync': lambda: mock.patch('os.fsync', side_effect=OSError(28, 'No space left on device')),
    'rename': lambda: mock.patch('os.replace', side_effect=OSError(122, 'Disk quota exceeded')),
}


@pytest.mark.parametrize('where', list(INJECTED))
def test_full_disk_injected(where, tmp_path):
    p = tmp_path / 'loss.safetensors'
    write_weights(tiny_discriminators(), p, {'counter': 1}); before = p.read_bytes()
    with INJECTED[where]():
        with pytest.raises(OSError) as e: write_weights(tiny_discriminators((16, 16)), p, {'counter': 2})
    msg = str(e.value)
    assert str(p) in msg and 'previous file (if any) is unchanged' in msg, msg
    assert e.value.errno in (28, 122)
    assert p.read_bytes() == before and read_weights(p)[1]['counter'] == 1
    assert _temp_files(tmp_path) == [], 'no temporary file may be left behind'
    with INJECTED[where]():   # a new file: nothing at all is left
        with pytest.raises(OSError): write_weights(tiny_discriminators(), tmp_path / 'new.safetensors')
    assert not (tmp_path / 'new.safetensors').exists() and _temp_files(tmp_path) == []


def test_full_disk_file_size_limit(tmp_path):
    "A real failing write without root: the file-size limit (RLIMIT_FSIZE) of a forked process stops it at 64 KiB."
    from reliability_workers import full_disk_write
    p = tmp_path / 'loss.safetensors'
    write_weights(tiny_discriminators(), p, {'counter': 1}); before = p.read_bytes()
    receive, send = CTX.Pipe(duplex=False)
    proc = _start(full_disk_write, str(p), 64*1024, send); proc.join(60)
    assert receive.poll(10); msg = receive.recv()
    assert msg.startswith('OSError') and 'File too large' in msg and str(p) in msg and 'unchanged' in msg, msg
    assert p.read_bytes() == before and _temp_files(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    "A 64 KiB tmpfs (needs root and mount rights; skipped otherwise)."
    mnt = tmp_path / 'small'; mnt.mkdir()
    if os.geteuid() != 0 or shutil.which('mount') is None: pytest.skip('mounting a tmpfs needs root')
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mnt)], capture_output=True, text=True)
    if r.returncode != 0: pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip()}')
    try: yield mnt
    finally: subprocess.run(['umount', str(mnt)], capture_output=True)


def test_full_disk_tmpfs(tiny_tmpfs):
    "A real full disk: a 64 KiB tmpfs that holds a small loss file but not a large one."
    p = tiny_tmpfs / 'loss.safetensors'
    write_weights(tiny_discriminators(), p, {'counter': 1}); before = p.read_bytes()
    with pytest.raises(OSError) as e: write_weights(tiny_discriminators((64, 64)), p, {'counter': 2})
    assert e.value.errno == 28 and str(p) in str(e.value) and 'unchanged' in str(e.value), str(e.value)
    assert p.read_bytes() == before and read_weights(p)[1]['counter'] == 1
    assert _temp_files(tiny_tmpfs) == []
    with pytest.raises(OSError): MDFLoss(tiny_discriminators((64,))).save(tiny_tmpfs / 'other.safetensors')
    assert sorted(q.name for q in tiny_tmpfs.iterdir()) == ['loss.safetensors']
    write_weights(tiny_discriminators(), p, {'counter': 3})   # space is free again: writing works
    assert read_weights(p)[1]['counter'] == 3


# =====================================================================================================================
# 4. Scale-out: DDP, torch.compile, autocast
# =====================================================================================================================

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    "Two processes under torchrun (gloo, CPU, 127.0.0.1) running reliability_ddp.py; what rank 0 measured."
    out = tmp_path_factory.mktemp('ddp')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc-per-node=2', '--rdzv-backend=static',
           '--master-addr=127.0.0.1', f'--master-port={_free_port()}', str(HERE / 'reliability_ddp.py'), str(out), '6']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    from safetensors.torch import load_file
    return json.loads((out / 'report.json').read_text()), load_file(out / 'ddp.safetensors'), time.perf_counter() - t0


def test_ddp_mdfloss_unchanged_and_gradients_match_one_process(ddp_run):
    sys.path.insert(0, str(HERE))
    from reliability_ddp import batch, tiny_model
    report, tensors, seconds = ddp_run
    assert report['world'] == 2
    for flag in ('loss_has_no_trainable_parameters', 'loss_grads_none', 'buffers_unchanged', 'state_unchanged', 'loss_identical_on_ranks'):
        assert report[flag], flag
    model, crit = tiny_model(), tiny_loss()
    x, y = batch()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore'); crit(model(x), y).backward()
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(tensors[f'grad{i}'], p.grad, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(tensors[f'wrapped_grad{i}'], p.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.skipif(not _has('mdf_loss.restoration'), reason='the restoration trainer is not there yet')
def test_ddp_restoration_trainer_matches_one_process(ddp_run):
    """The restoration trainer's native DDP over 2 processes (interrupted after 4 of 6 steps, resumed from rank 0's
    checkpoint into other starting weights) ends with one uninterrupted process's weights, loss history and metrics."""
    from mdf_loss import restoration as R
    from reliability_workers import restoration_setup
    report, tensors, seconds = ddp_run
    assert report['processes'] == 2 and report['resumed_steps_run'] == 3
    assert report['local_batches'] == [2]  # each process trained on half of each step's batch of 4
    net, loss_fn, sampler = restoration_setup()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        info = R.train(net, loss_fn, sampler, 6, lr=1e-3, progress=False)
        net.eval()
        with torch.no_grad():
            inp, target = sampler.batch(10_000)
            metrics = R.image_metrics(net(inp), target)
    assert info['processes'] == 1
    assert report['history'] == pytest.approx(info['history'], rel=1e-5)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(tensors[f'restoration.{k}'], v, rtol=1e-4, atol=1e-6)
    for k, v in metrics.items():
        if v is not None: assert report['metrics'][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    print(f'\nDDP (2 processes) restoration metrics {report["metrics"]}; one process {metrics}; torchrun took {seconds:.1f} s')


def _experiment_folders(root: Path) -> tuple[Path, Path]:
    "Training and test folders cut from the bundled photo."
    from mdf_loss.core import bundled_image_path, load_image, to_pil
    photo = load_image(bundled_image_path())
    for name, size, spots in [('train', 64, [(0, 0), (200, 300), (100, 50)]), ('test', 48, [(100, 100), (300, 400)])]:
        (root/name).mkdir()
        for i, (t, l) in enumerate(spots): to_pil(photo[..., t:t + size, l:l + size]).save(root/name/f'{name}{i}.png')
    return root/'train', root/'test'


@pytest.mark.skipif(not _has('mdf_loss.restoration'), reason='the restoration trainer is not there yet')
def test_ddp_experiment_matches_one_process(tmp_path):
    """`torchrun --nproc-per-node=2 --no-python mdf-loss experiment ...` (gloo, 127.0.0.1) writes the results one process
    writes: the same learning rates chosen on the validation split, and the same test metrics to round-off."""
    train_dir, test_dir = _experiment_folders(tmp_path)
    exe = shutil.which('mdf-loss', path=str(Path(sys.executable).parent)) or shutil.which('mdf-loss')
    assert exe, 'the mdf-loss console script is not installed'
    args = ['experiment', '--task', 'denoise', '--losses', 'l1,mdf-official', '--train', str(train_dir), '--test', str(test_dir),
            '--preset', 'smoke', '--steps', '4', '--lr-grid', '0.001,0.01', '--threads', '1', '--no-progress']
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    one = subprocess.run([exe, *args, '--out', str(tmp_path/'one')], capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc-per-node=2', '--rdzv-backend=static',
                          '--master-addr=127.0.0.1', f'--master-port={_free_port()}', '--no-python', exe, *args,
                          '--out', str(tmp_path/'two')], capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count('wrote ') == 1, two.stdout  # rank 0 alone reports
    a, b = (json.loads((tmp_path/d/'results.json').read_text()) for d in ('one', 'two'))
    assert a['machine']['processes'] == 1 and b['machine']['processes'] == 2
    assert '2 processes (DDP)' in (tmp_path/'two'/'results.md').read_text()
    assert [(r['run'], r['lr']) for r in a['runs']] == [(r['run'], r['lr']) for r in b['runs']]
    for ra, rb in zip(a['runs'], b['runs']):
        assert rb['history'] == pytest.approx(ra['history'], rel=1e-4, abs=1e-7), ra['run']
        for key, ea in ra['eval'].items():
            for metric, v in ea['mean'].items():
                if v is not None: assert rb['eval'][key]['mean'][metric] == pytest.approx(v, rel=1e-4, abs=1e-6), (ra['run'], metric)
    for ca, cb in zip(a['sweep'].values(), b['sweep'].values()):
        if ca.get('run'):
            assert [c['score'] for c in cb['candidates']] == pytest.approx([c['score'] for c in ca['candidates']], rel=1e-4)


def test_autocast_bfloat16():
    "Inside torch.autocast('cpu', bfloat16) the loss runs in bfloat16, returns the input's dtype, close to float32."
    crit = tiny_loss()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    full = crit(x, y)
    out = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = crit(out, y)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert abs(low - full) < 0.03*full, (low, full)
    low.backward()
    ref = x.clone().requires_grad_(); crit(ref, y).backward()
    assert torch.isfinite(out.grad).all()
    assert torch.nn.functional.cosine_similarity(out.grad.flatten(), ref.grad.flatten(), 0) > 0.99
    # a model under autocast feeding the loss: the usual mixed-precision training step
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        pred = net(x)
        assert pred.dtype == torch.bfloat16
        loss = crit(pred, y)
    loss.backward()
    assert torch.isfinite(net.weight.grad).all()


SLOW = 'slow' in os.environ.get('MDF_LOSS_TEST_FLAGS', '').split()   # as tests/test_notebooks.py: run the long checks too


def _compile_and_compare(backend: str, validate: bool, fullgraph: bool) -> float:
    "Compile the loss with `backend`; its value and gradient must equal eager's. Returns the seconds of compile + first call."
    import torch._dynamo
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    crit = tiny_loss(validate=validate)
    t0 = time.perf_counter()
    compiled = torch.compile(crit, backend=backend, fullgraph=fullgraph)
    out = x.clone().requires_grad_(); value = compiled(out, y); value.backward()
    seconds = time.perf_counter() - t0
    ref = x.clone().requires_grad_(); eager = crit(ref, y); eager.backward()
    torch.testing.assert_close(value, eager, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.grad, ref.grad, rtol=1e-4, atol=1e-9)
    if validate:
        with pytest.raises(ValueError, match='NaN or Inf'): compiled(x, y.clone().fill_(float('nan')))
    return seconds


def test_torch_compile():
    """Under torch.compile (AOT autograd, as a user compiles a training step) the loss equals eager, value and gradient,
    and still checks its input; with the default validate=True its value checks (.item()) break the graph."""
    s1 = _compile_and_compare('aot_eager', validate=False, fullgraph=False)
    s2 = _compile_and_compare('aot_eager', validate=True, fullgraph=False)
    print(f'\ntorch.compile (aot_eager): validate=False {s1:.1f} s, validate=True {s2:.1f} s')


def test_torch_compile_one_graph():
    "With validate=False the whole loss is one graph (fullgraph=True): no graph break inside a compiled training step."
    _compile_and_compare('aot_eager', validate=False, fullgraph=True)


@pytest.mark.skipif(not SLOW, reason='inductor compiles C++ (about 20-60 s on 2 CPU cores): set MDF_LOSS_TEST_FLAGS=slow')
@pytest.mark.skipif(shutil.which('g++') is None and shutil.which('c++') is None, reason='no C++ compiler for inductor')
def test_torch_compile_inductor(tmp_path, monkeypatch):
    "The default backend (inductor), fullgraph, validate=False: equal to eager in value and gradient."
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'inductor'))
    print(f'\ntorch.compile (inductor, fullgraph): {_compile_and_compare("inductor", validate=False, fullgraph=True):.1f} s')


# =====================================================================================================================
# 5. CLI hygiene
# =====================================================================================================================

class _Hung(BaseException):
    "The command ran on instead of failing: raised by an alarm, and not an Exception, so main() cannot swallow it."


def run_main(*argv, seconds: int = 60):
    "mdf-loss `argv` in this process: (exit code, stdout, stderr)."
    from mdf_loss.cli import main
    out, err = io.StringIO(), io.StringIO()
    def alarm(*_): raise _Hung(f'mdf-loss {" ".join(map(str, argv))} still running after {seconds} s')
    old = signal.signal(signal.SIGALRM, alarm); signal.alarm(seconds)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: code = main([str(a) for a in argv])
            except SystemExit as e: code = e.code
    finally:
        signal.alarm(0); signal.signal(signal.SIGALRM, old)
    return code, out.getvalue(), err.getvalue()


def subcommands() -> dict[str, argparse.ArgumentParser]:
    "The subcommands of the real parser: new ones (train, experiment, ...) are picked up as they are added."
    from mdf_loss.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


OUTPUTS = ('out', 'dst', 'output', 'out_dir', 'output_dir')


def _is_output(a) -> bool: return a.dest in OUTPUTS or a.dest.startswith('out')
def _arguments(parser) -> list: return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _inputs(parser) -> list:
    "Arguments that name an existing file or folder to read: typed Path, not an output."
    return [a for a in _arguments(parser) if a.type is Path and not _is_output(a)]


def _base_argv(parser, tmp: Path, missing: bool = False) -> list[str]:
    "The smallest command line: required arguments filled in, outputs in `tmp`; with `missing`, every input points nowhere."
    pos, opt = [], []
    for a in _arguments(parser):
        flag = a.option_strings[-1] if a.option_strings else None
        if missing and a in _inputs(parser): value = str(tmp / f'no-such-{a.dest}')
        elif a.type is Path and _is_output(a): value = str(tmp / a.dest)
        elif a.dest == 'task' and a.choices: value = 'denoise' if 'denoise' in a.choices else str(list(a.choices)[0])
        elif a.required or not flag: value = str(list(a.choices)[0]) if a.choices else str(tmp / f'{a.dest}.in') if a.type is Path else '1'
        else: continue
        if flag: opt += [flag, value]
        else: pos.append(value)
    return pos + opt


def _one_line_exit_2(code, err, *words):
    assert code == 2, (code, err)
    assert 'Traceback' not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words: assert w in err, (w, err)


def test_cli_subcommands_found():
    names = set(subcommands())
    assert {'demo', 'convert-official'} <= names, names
    print(f'\nsubcommands checked: {sorted(names)}')


@pytest.mark.parametrize('name', sorted(subcommands()))
def test_cli_bad_argument(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(*run_main(name, '--definitely-not-an-option')[::2], 'mdf-loss', 'error:')
    parser = subcommands()[name]
    numeric = [a for a in _arguments(parser) if a.type in (int, float) and a.option_strings]
    for a in numeric[:3]:
        code, _, err = run_main(name, *_base_argv(parser, tmp_path), a.option_strings[-1], 'many')
        _one_line_exit_2(code, err, 'invalid', "'many'")
    code, out, _ = run_main(name, '--help')
    assert code == 0 and f'usage: mdf-loss {name}' in out


@pytest.mark.parametrize('name', sorted(subcommands()))
def test_cli_missing_file(name, tmp_path, monkeypatch):
    "Every file or folder the command reads points nowhere: one line naming it, exit code 2; with --debug, the traceback."
    monkeypatch.chdir(tmp_path)
    parser = subcommands()[name]
    if not _inputs(parser): pytest.skip(f'mdf-loss {name} reads no file')
    argv = [name, *_base_argv(parser, tmp_path, missing=True)]
    code, _, err = run_main(*argv)
    _one_line_exit_2(code, err, 'no-such-', f'mdf-loss {name}: error:')
    with pytest.raises(Exception) as e: run_main('--debug', *argv)   # --debug: the exception itself, with its traceback
    shown = ''.join(traceback.format_exception(e.value))
    assert 'no-such-' in shown and 'Traceback' in shown, shown


@pytest.mark.parametrize('name', sorted(subcommands()))
def test_cli_unknown_task(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = subcommands()[name]
    task = [a for a in _arguments(parser) if a.dest == 'task']
    if not task: pytest.skip(f'mdf-loss {name} takes no --task')
    argv = [a for a in _base_argv(parser, tmp_path)]
    flag = task[0].option_strings[-1] if task[0].option_strings else None
    if flag in argv: i = argv.index(flag); argv = argv[:i] + argv[i + 2:]
    code, _, err = run_main(name, *argv, *( [flag] if flag else []), 'no-such-task')
    _one_line_exit_2(code, err, 'no-such-task')


def test_cli_unknown_subcommand_and_none():
    _one_line_exit_2(*run_main('frobnicate')[::2], 'invalid choice')
    _one_line_exit_2(*run_main()[::2], 'required')


HOSTILE_FOR_CONVERT = {   # convert-official on files a user might pass by mistake, or an attacker on purpose
    'empty file': (lambda d: b'', 'could not be parsed'),
    'a safetensors file': (lambda d: st_save_bytes({'a': torch.zeros(2)}), 'could not be parsed'),
    'a pickle with os.system': (lambda d: _legacy_parts([_Marker('os.system', d / 'pwned')]), "refused to load global 'posix.system'"),
    'truncated legacy file': (lambda d: _legacy_parts([1])[:30], 'could not be parsed'),
    'records of the wrong structure': (lambda d: _legacy_parts([1, 2]), 'not a SinGAN WDiscriminator'),
}


@pytest.mark.parametrize('case', list(HOSTILE_FOR_CONVERT))
def test_cli_convert_hostile_files(case, tmp_path):
    make, words = HOSTILE_FOR_CONVERT[case]
    src = tmp_path / 'in.pth'; src.write_bytes(make(tmp_path))
    code, _, err = run_main('convert-official', src, tmp_path / 'out.safetensors')
    _one_line_exit_2(code, err, words, str(src))
    assert not (tmp_path / 'out.safetensors').exists() and not (tmp_path / 'pwned').exists()
    code, _, err = run_main('convert-official', tmp_path, tmp_path / 'out.safetensors')
    _one_line_exit_2(code, err, 'is a directory')


# =====================================================================================================================
# 6. No unsafe deserialisation anywhere in the package
# =====================================================================================================================

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


def test_loading_never_unpickles(good_weights, monkeypatch):
    "MDFLoss.load and from_pretrained read only safetensors: any pickle or torch.load call during them fails the test."
    def forbidden(*a, **k): raise AssertionError('unpickling during a weight load')
    monkeypatch.setattr(pickle, 'load', forbidden); monkeypatch.setattr(pickle, 'loads', forbidden)
    monkeypatch.setattr(pickle, 'Unpickler', forbidden); monkeypatch.setattr(torch, 'load', forbidden)
    MDFLoss.load(good_weights)
    for name in MDFLoss.available(): MDFLoss.from_pretrained(name)
