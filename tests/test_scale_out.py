"""Scale-out: MDFLoss and the restoration trainer under DistributedDataParallel on 2 processes (gloo, 127.0.0.1),
autocast, torch.compile and torch.export."""
import json, os, shutil, socket, subprocess, sys, time, warnings
from pathlib import Path

import pytest

from conftest import EXE, QUIET
import torch

from mdf_loss import MDFLoss
from workers import tiny_loss

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    "Two processes under torchrun (gloo, CPU, 127.0.0.1) running ddp_worker.py; what rank 0 measured."
    out = tmp_path_factory.mktemp('ddp')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc-per-node=2', '--rdzv-backend=static',
           '--master-addr=127.0.0.1', f'--master-port={_free_port()}', str(HERE / 'ddp_worker.py'), str(out), '6']
    env = QUIET
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    from safetensors.torch import load_file
    return json.loads((out / 'report.json').read_text()), load_file(out / 'ddp.safetensors'), time.perf_counter() - t0


def test_ddp_mdfloss_unchanged_and_gradients_match_one_process(ddp_run):
    sys.path.insert(0, str(HERE))
    from ddp_worker import batch, tiny_model
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


def test_ddp_restoration_trainer_matches_one_process(ddp_run):
    """The restoration trainer's native DDP over 2 processes (interrupted after 4 of 6 steps, resumed from rank 0's
    checkpoint into other starting weights) ends with one uninterrupted process's weights, loss history and metrics."""
    from mdf_loss.restoration import trainer as R
    from workers import restoration_setup
    report, tensors, seconds = ddp_run
    assert report['processes'] == 2 and report['resumed_steps_run'] == 3
    assert report['local_batches'] == [2]  # each process trained on half of each step's batch of 4
    net, loss_fn, sampler = restoration_setup()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        info = R.train_network(net, loss_fn, sampler, 6, lr=1e-3, progress=False)
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


def test_ddp_experiment_matches_one_process(tmp_path):
    """`torchrun --nproc-per-node=2 --no-python mdf-loss experiment ...` (gloo, 127.0.0.1) writes the results one process
    writes: the same learning rates chosen on the validation split, and the same test metrics to round-off."""
    train_dir, test_dir = _experiment_folders(tmp_path)
    exe = EXE
    assert exe, 'the mdf-loss console script is not installed'
    args = ['experiment', '--task', 'denoise', '--losses', 'l1,mdf-official', '--train', str(train_dir), '--test', str(test_dir),
            '--preset', 'smoke', '--steps', '4', '--lr-grid', '0.001,0.01', '--threads', '1', '--no-progress']
    env = QUIET
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


@pytest.mark.filterwarnings('ignore:MDFLoss. inputs stray:UserWarning')  # expected: an untrained network's outputs leave [0, 1]
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
