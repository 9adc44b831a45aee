"""Property-based tests (hypothesis) of MDFLoss over shapes, dtypes, devices, value ranges and NaN/Inf placements: a
finite loss equal to the reference formula, or the documented error raised by the input check."""
import copy, functools, traceback, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, example, given, settings, strategies as st

from mdf_loss import MDFLoss
from mdf_loss.loss import MODES
from workers import tiny_loss

CHECKS_PY = str(Path('mdf_loss') / 'contract.py')  # where the input contract raises


RF = 11   # receptive field of a 5-layer 3x3 discriminator: the smallest side the loss accepts
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
OTHERS = [torch.uint8, torch.int8, torch.int32, torch.int64, torch.bool, torch.complex64]
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else []) + (
    ['mps'] if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available() else [])


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny tensors: one thread is faster, and on a shared machine two spinning OpenMP threads can be 100x slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def _small_loss(key: tuple) -> MDFLoss: return tiny_loss(**dict(key))

def small_loss(**kwargs) -> MDFLoss:
    "One tiny MDFLoss per set of options, built once (building it folds BatchNorm; calling it is the part under test)."
    return _small_loss(tuple(sorted(kwargs.items())))


def reference(crit: MDFLoss, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    "Per image, in float64 with the unfolded modules: the reference formula, and the feature energy that bounds round-off."
    if not hasattr(crit, '_float64_copies'):  # made once per loss object, kept on it
        crit._float64_copies = [copy.deepcopy(d).double().cpu() for d in crit.discriminators]
    total = energy = torch.zeros(x.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for d in crit._float64_copies[:crit.num_scales]:
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
        if t.max() > 5 or t.min() < -4: return ValueError   # contract.RANGE_LIMIT: an image on the 0-255 scale
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
            assert where.endswith(CHECKS_PY), f'raised inside {where}, not by the input check: {e}'
            assert len(str(e)) > 20
            event(f'{type(e).__name__}'); return
    event(f'finite loss, {x.dtype}'); assert want is None, f'expected {want.__name__} for shapes {tuple(x.shape)}, {tuple(y.shape)}, dtypes {x.dtype}, {y.dtype}'
    assert got.dtype == x.dtype and got.device == x.device
    assert got.shape == ((x.shape[0],) if reduction == 'none' else ())
    assert torch.isfinite(got).all() and (got >= 0).all()
    if mode != 'exact': return   # other modes trade exactness for speed: their accuracy is measured in the loss notebook
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
    "A network's output a little outside [0,1] passes with one warning per loss, at the caller's line; far outside (0-255) is refused."
    crit = tiny_loss()
    x = torch.rand(1, 3, 16, 16)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        for _ in range(3): crit(x*2 - 0.5, x)
    (m,) = [m for m in w if 'stray outside [0,1]' in str(m.message)]
    assert Path(m.filename).resolve() == Path(__file__).resolve(), m.filename  # it names the caller's line, not mdf_loss's
    with pytest.raises(ValueError, match='divide by 255'): crit(x*255, x)
    with pytest.raises(ValueError, match='NaN or Inf'): crit(x, x.clone().fill_(float('nan')))
    with pytest.raises(TypeError, match='x.float\\(\\)/255'): crit((x*255).byte(), x)


def test_torch_export():
    "torch.export captures the loss's forward pass (validate=False: the input check syncs with the host), and the exported program gives the same value."
    crit = tiny_loss(validate=False)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 24, 20, generator=g), torch.rand(2, 3, 24, 20, generator=g)
    program = torch.export.export(crit, (x, y))
    torch.testing.assert_close(program.module()(x, y), crit(x, y), rtol=1e-6, atol=0)
    x2, y2 = torch.rand(2, 3, 24, 20, generator=g), torch.rand(2, 3, 24, 20, generator=g)
    torch.testing.assert_close(program.module()(x2, y2), crit(x2, y2), rtol=1e-6, atol=0)  # new inputs, same shapes


def test_torch_compile_fullgraph():
    "fullgraph=True compiles a validate=False loss to the eager value; with the input check on it fails naming validate=False."
    x, y = torch.rand(2, 3, 20, 20), torch.rand(2, 3, 20, 20)
    try:
        fast = tiny_loss(validate=False)
        out = x.clone().requires_grad_()
        value = torch.compile(fast, fullgraph=True, backend='eager')(out, y)
        torch.testing.assert_close(value, fast(x, y), rtol=1e-6, atol=0)
        value.backward(); assert out.grad is not None and torch.isfinite(out.grad).all()
        torch._dynamo.reset()
        with pytest.raises(Exception, match='validate=False'):
            torch.compile(tiny_loss(), fullgraph=True, backend='eager')(x, y)
        torch._dynamo.reset()
        checked = tiny_loss()  # without fullgraph the check runs eagerly, outside the graph
        torch.testing.assert_close(torch.compile(checked, backend='eager')(x, y), checked(x, y), rtol=1e-6, atol=0)
    finally: torch._dynamo.reset()
