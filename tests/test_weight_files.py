"""Weight files and phase-1 checkpoints: broken, truncated, fuzzed or hostile files are refused with an error that names
the file and the problem, and a good file round-trips exactly."""
import json, os, random, struct, time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import load as st_load_bytes, save as st_save_bytes

from conftest import ROOT
from mdf_loss import MDFLoss
from mdf_loss.blocks import Discriminator, Generator
from mdf_loss.runtime import atomic_write_bytes
from mdf_loss.weights import (CHECKPOINT_KEY, META_KEY, WeightFileError, read_checkpoint, read_pretrained, read_weights,
                              write_checkpoint)
from workers import tiny_discriminators


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


# --- phase-1 checkpoints ---------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def good_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    G, D = Generator(32), Discriminator(32)
    p = write_checkpoint(tmp_path_factory.mktemp('ck') / 'scale_0.safetensors', G, D, dict(width=32, noise_amp=1.0), z_opt=torch.randn(1, 3, 25, 32))
    return p, st_load_bytes(p.read_bytes())


def _forged(tmp_path: Path, info, tensors) -> Path:
    return atomic_write_bytes(st_save_bytes(tensors, metadata={CHECKPOINT_KEY: json.dumps(info)}), tmp_path / 'forged.safetensors')


FORGED = {   # name: (metadata, tensor change, words of the error)
    'a width of 4000 with width-32 tensors': (dict(width=4000, noise_amp=1.0), None, 'do not match a width-4000 scale'),
    'a width of 10**9 (refused before building anything)': (dict(width=10**9, noise_amp=1.0), None, 'width must be an int in 1..4096'),
    'a width as a string': (dict(width='32', noise_amp=1.0), None, 'width must be an int'),
    'another width': (dict(width=64, noise_amp=1.0), None, 'do not match a width-64'),
    'a NaN noise amplitude': (dict(width=32, noise_amp=float('nan')), None, 'noise_amp'),
    'metadata not a dict': ([32], None, 'must be a JSON object|not a dict'),
    'an extra tensor': (dict(width=32, noise_amp=1.0), lambda t: {**t, 'D.extra': torch.zeros(1)}, 'D.extra'),
    'a missing tensor': (dict(width=32, noise_amp=1.0), lambda t: {n: v for n, v in t.items() if n != 'G.head.conv.weight'}, 'G.head.conv.weight'),
    'a z_opt of the wrong rank': (dict(width=32, noise_amp=1.0), lambda t: {**t, 'z_opt': torch.zeros(3)}, 'z_opt must be'),
    'a newer checkpoint version': (dict(width=32, noise_amp=1.0, version=99), None, 'newer mdf_loss'),
}


@pytest.mark.parametrize('case', list(FORGED))
def test_forged_checkpoints_are_refused_quickly(case, good_checkpoint, tmp_path):
    "A checkpoint from a copied run folder is checked against networks built on the meta device before any memory is allocated."
    info, change, words = FORGED[case]
    p = _forged(tmp_path, info, change(good_checkpoint[1]) if change else good_checkpoint[1])
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=words.replace('(', r'\(').replace(')', r'\)').replace('.', r'\.')): read_checkpoint(p)
    assert time.perf_counter() - t0 < 5


def test_good_checkpoint_reads_back(good_checkpoint, tmp_path):
    p, _ = good_checkpoint
    G, D, info, z = read_checkpoint(p)
    assert info['width'] == 32 and z.shape == (1, 3, 25, 32)
    cut = tmp_path / 'cut.safetensors'; cut.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ValueError, match='not a readable phase-1 checkpoint'): read_checkpoint(cut)


# --- every weight file the project ever wrote still loads ------------------------------------------------------------

def test_shipped_and_older_weight_files_load():
    "The bundled losses, and a loss file written by mdf_loss 0.1.0 before phase 1 adopted SinGAN's arithmetic."
    for name in MDFLoss.available(): assert MDFLoss.from_pretrained(name).num_scales >= 1, name
    old = MDFLoss.load(ROOT / 'tests' / 'fixtures' / 'legacy_run' / 'expected_loss.safetensors')
    assert old.meta['provenance']['package_version'] == '0.1.0' and len(old.discriminators) == 2


def test_official_denoise_is_an_alias_of_the_identical_sisr_file():
    "The authors' denoising file is byte-identical to their SISR file: the package ships it once, under both names."
    (a, ma), (b, mb) = read_pretrained('official-sisr'), read_pretrained('official-denoise')
    for d, e in zip(a, b, strict=True):
        for (n, t), u in zip(d.state_dict().items(), e.state_dict().values()): assert torch.equal(t, u), n
    assert (ma['task'], mb['task'], mb['alias_of']) == ('sisr', 'denoise', 'official-sisr')
    assert MDFLoss.from_pretrained('official-denoise').meta['task'] == 'denoise'
    assert not (ROOT / 'mdf_loss' / 'assets' / 'official-denoise.safetensors').exists()


def test_the_alias_rests_on_identical_official_files(data_dir):
    "Why the alias is sound: the authors' Ds_Denoising.pth and Ds_SISR.pth have the same bytes, and the shipped file holds their tensors."
    import hashlib
    from mdf_loss.weights import import_official
    src = data_dir / 'mdf_official'
    digest = lambda f: hashlib.sha256((src / f).read_bytes()).hexdigest()
    assert digest('Ds_Denoising.pth') == digest('Ds_SISR.pth')
    ours, _ = read_pretrained('official-denoise')
    theirs, _ = import_official(src / 'Ds_Denoising.pth')
    for d, e in zip(ours, theirs, strict=True):
        for (n, t), u in zip(d.state_dict().items(), e.state_dict().values(), strict=True): assert torch.equal(t, u), n


def test_recorded_experiment_results_still_load():
    "Every results.json recorded under benchmarks/results reads back, with its config rebuilt where it describes one."
    from mdf_loss.restoration.experiment import load_results
    found = sorted((ROOT / 'benchmarks' / 'results').glob('restoration_*.json'))
    assert found
    for p in found:
        res, cfg = load_results(p)
        assert res['tables'] and res['runs'], p.name
        if cfg is not None: assert cfg.task == res['task'] and cfg.seed == res['seed'], p.name
