"""Interruptions and a full disk: atomic writes, SIGKILL at random moments (weight files, phase 1, restoration), a
disk that fills up; every kill leaves loadable files and no finished work lost, and a resumed run ends as an
uninterrupted one."""
import hashlib, io, json, multiprocessing as mp, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors import safe_open

from mdf_loss import MDFLoss
from mdf_loss.weights import read_weights, write_weights
from safetensors.torch import load_file

from mdf_loss.weights import read_checkpoint
from workers import tiny_discriminators

KILL_SEED = int(os.environ.get('MDF_LOSS_KILL_SEED', '7'))   # the random kill moments; set it to replay a failure


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


def test_phase1_files_are_written_atomically(tmp_path):
    from mdf_loss.adversarial import TrainConfig, train
    _audit_writes(); AUDIT['on'] = True
    try: train(TrainConfig(max_size=36, iters=2, log_every=1), tmp_path / 'run', progress=False)
    finally: AUDIT['on'] = False
    _check_atomic(tmp_path / 'run')
    assert {p.name for p in (tmp_path / 'run').rglob('*.safetensors')} >= {'loss.safetensors', 'scale_0.safetensors'}


@pytest.mark.filterwarnings('ignore:MDFLoss. inputs stray:UserWarning')  # expected: an untrained network's outputs leave [0, 1]
def test_restoration_checkpoints_are_written_atomically(tmp_path):
    from mdf_loss.restoration import trainer as R
    from workers import restoration_setup
    model, loss_fn, sampler = restoration_setup(batch=2)
    _audit_writes(); AUDIT['on'] = True
    try: R.train_network(model, loss_fn, sampler, 2, checkpoint=tmp_path / 'ck' / 'model.pt', every=1, progress=False)
    finally: AUDIT['on'] = False
    _check_atomic(tmp_path / 'ck', allowed_append=())


# --- SIGKILL at random moments --------------------------------------------------------------------------------------

def _forkserver():
    "A forkserver with torch and the package imported once: each job is a fresh process forked from it in milliseconds."
    ctx = mp.get_context('forkserver')
    ctx.set_forkserver_preload(['torch', 'torch._dynamo', 'tqdm.auto', 'workers', 'mdf_loss.weights']   # torch.optim imports dynamo: 2 s
                               + ['mdf_loss.adversarial', 'mdf_loss.restoration.trainer'])
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
    from workers import write_forever
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
    from mdf_loss.weights import read_checkpoint
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
    from mdf_loss.restoration.trainer import load_checkpoint
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


def test_kill_and_resume_phase1_and_restoration(tmp_path):
    """SIGKILL phase 1 and a restoration run at random moments (>= 5 kills in all), resuming after each: every kill leaves
    loadable checkpoints with no finished work lost, and every resumed run ends with the uninterrupted run's result."""
    from workers import phase1_run, restoration_run
    from mdf_loss.weights import same_weights
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
    from workers import full_disk_write
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


# --- `mdf-loss train` killed with SIGKILL ------------------------------------------------------------------------------

ARGS = ['--task', 'denoise', '--max-size', '48', '--iters', '40', '--seed', '1', '--no-progress']
CODE = "import sys; from mdf_loss.cli import main; sys.exit(main(['train', *sys.argv[1:]]))"
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
