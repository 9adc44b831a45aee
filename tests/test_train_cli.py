"""`mdf-loss train` under SIGKILL: a killed phase-1 run resumes to exactly the weights of an uninterrupted one.

Each run is a subprocess that calls `mdf_loss.adversarial.cli_train`, on a 48 px version of the bundled photo
(3 scales) with few iterations, single-threaded so that runs in parallel do not slow each other down.
"""
import argparse, json, os, random, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdf_loss.adversarial import cli_train, read_checkpoint, train_arguments
from mdf_loss.loss import MDFLoss

ARGS = ['--task', 'denoise', '--max-size', '48', '--iters', '40', '--seed', '1', '--no-progress']
CODE = ("import argparse, sys; from mdf_loss.adversarial import train_arguments, cli_train; "
        "sys.exit(cli_train(train_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:])))")
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', CODE, *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout=120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def wait_for(path: Path, proc: subprocess.Popen, timeout=60):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path.name} appeared:\n{proc.communicate()[0]}"
        assert time.time() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.01)


def kill(proc: subprocess.Popen):
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def assert_consistent(run: Path):
    "What a kill may leave: finished checkpoints that read back, and a loss file only if it is complete."
    json.loads((run/'config.json').read_text())
    for ck in sorted((run/'checkpoints').glob('scale_*.safetensors')): read_checkpoint(ck)
    if (run/'loss.safetensors').exists(): MDFLoss.load(run/'loss.safetensors')


def same_tensors(a: Path, b: Path):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for n in ta: assert torch.equal(ta[n], tb[n]), n


def test_sigkill_and_resume_equal_an_uninterrupted_run(tmp_path):
    ref = start(*ARGS, '--out', str(tmp_path/'ref'))
    run = tmp_path/'run'; ck = run/'checkpoints'
    proc = start(*ARGS, '--out', str(run))
    # 1. SIGKILL during the middle scale (scale 1 of 0, 1, 2)
    wait_for(ck/'scale_0.safetensors', proc)
    time.sleep(0.3)
    assert not (ck/'scale_1.safetensors').exists(), "scale 1 finished too fast to be killed in the middle"
    kill(proc)
    assert sorted(p.name for p in ck.glob('scale_*.safetensors')) == ['scale_0.safetensors']
    assert not (run/'loss.safetensors').exists()
    assert_consistent(run)
    # 2. four more kills at random moments of resumed runs (start-up, training, writing)
    rng = random.Random(0)
    for _ in range(4):
        proc = start(*ARGS, '--out', str(run), '--resume')
        time.sleep(rng.uniform(0.5, 4.0))
        if proc.poll() is None: kill(proc)
        else: finish(proc)
        assert_consistent(run)
    # 3. the last resume finishes the run
    out = finish(start(*ARGS, '--out', str(run), '--resume'))
    assert 'wrote' in out
    finish(ref)
    same_tensors(run/'loss.safetensors', tmp_path/'ref'/'loss.safetensors')
    for k in range(3): same_tensors(ck/f'scale_{k}.safetensors', tmp_path/'ref'/'checkpoints'/f'scale_{k}.safetensors')
    meta = MDFLoss.load(run/'loss.safetensors').meta
    assert meta['scale_sizes'] == [[25, 32], [31, 39], [38, 48]]
    assert meta['provenance']['command'].startswith('mdf-loss train --task denoise')
    log = [json.loads(l) for l in (run/'log.jsonl').read_text().splitlines()]
    assert [(r['scale'], r['iter']) for r in log] == [(k, i) for k in range(3) for i in range(40)]


@pytest.fixture
def one_thread():
    "In-process runs use one thread: these small convolutions gain nothing from more on a shared machine."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def parse(*argv):
    return train_arguments(argparse.ArgumentParser()).parse_args(list(argv))


@pytest.mark.parametrize('argv, words', [
    ([], '--task is required'),
    (['--task', 'jpeg', '--sigma', '5'], '--sigma applies to --task denoise, not jpeg'),
    (['--task', 'denoise', '--iters', '-3'], 'iters must be a positive int'),
    (['--task', 'denoise', '--image', 'no/such.png'], 'is not a file'),
    (['--task', 'custom'], '--custom MODULE:FUNCTION'),
    (['--task', 'custom', '--custom', 'no_such_module:fn', '--max-size', '32'], 'cannot import the custom distortion'),
])
def test_bad_arguments_raise_value_error(tmp_path, one_thread, argv, words):
    with pytest.raises(ValueError, match=words.replace('-', r'\-').replace('.', r'\.')):
        cli_train(parse(*argv, '--out', str(tmp_path/'run'), '--no-progress'))


def test_a_finished_folder_is_not_overwritten(tmp_path, one_thread):
    args = ['--task', 'sisr', '--max-size', '32', '--iters', '2', '--out', str(tmp_path/'run'), '--no-progress']
    assert cli_train(parse(*args)) == 0
    with pytest.raises(ValueError, match='already holds a phase-1 run'): cli_train(parse(*args))
    assert cli_train(parse(*args, '--resume')) == 0
