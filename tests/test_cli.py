"""The `mdf-loss` command, as a user runs it: every subcommand fails on a bad argument, a missing file or an unknown task
with exit code 2 and one line (the traceback with --debug), hostile files are refused, the demo writes its outputs,
and `train` parses its options into a TrainConfig."""
from __future__ import annotations

import argparse, contextlib, io, json, shutil, signal, subprocess, sys, traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save_bytes

from mdf_loss import MDFLoss
from mdf_loss.cli import cli_train, train_arguments
from conftest import Marker, legacy_pickle, run_cli

run = run_cli


def test_demo_writes_figure_and_table(tmp_path):
    r = run('demo', '--steps', '3', '--size', '32', '--train-iters', '3', '--out', tmp_path / 'out')
    assert r.returncode == 0, r.stderr
    out = tmp_path / 'out'
    assert {p.name for p in out.iterdir()} == {'demo.png', 'results.md', 'results.json', 'phase1'}
    assert MDFLoss.load(out / 'phase1' / 'loss.safetensors').meta['task'] == 'denoise'
    res = json.loads((out / 'results.json').read_text())['results']
    assert {'MDF (ours, trained now)', 'MDF (ours, shipped denoise)', "MDF (authors' SISR)", 'L1', 'L2', 'SSIM', 'MS-SSIM'} <= set(res)
    assert 'byte-identical' in res["MDF (authors' SISR)"]['what']
    for r_ in res.values():
        assert len(r_['psnr_curve']) == 4 and r_['psnr_curve'][-1] > r_['psnr_curve'][0]
    assert 'wrote' in r.stdout and 'demo.png' in r.stdout
    assert "Phase 1 for 'MDF (ours, trained now)' (3 iterations per scale): " in r.stdout, r.stdout  # how long it took
    assert json.loads((out / 'results.json').read_text())['phase1']['reused'] is False
    from PIL import Image
    assert Image.open(out / 'demo.png').size[0] > 600


def test_demo_by_default_uses_the_shipped_loss_and_trains_nothing(tmp_path):
    r = run('demo', '--steps', '2', '--size', '32', '--out', tmp_path / 'out')
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / 'out').iterdir()} == {'demo.png', 'results.md', 'results.json'}
    rec = json.loads((tmp_path / 'out' / 'results.json').read_text())
    assert rec['phase1']['loss'] is None and 'MDF (ours, trained now)' not in rec['results']
    assert 'Phase 1' not in (tmp_path / 'out' / 'results.md').read_text()
    assert '--preset medium' in rec['results']['MDF (ours, shipped denoise)']['what']  # says how the shipped loss was made


@pytest.mark.parametrize('args,message', [
    (('demo', '--steps', 'x'), "invalid int value: 'x'"),
    (('demo', '--steps', '0'), '--steps must be at least 1'),
    (('convert-official', 'nope.pth', 'o.safetensors'), 'nope.pth does not exist'),
    (('convert-official',), 'the following arguments are required'),
    (('unknown-command',), 'invalid choice'),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path):
    r = run(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_debug_shows_traceback(tmp_path):
    r = run('--debug', 'convert-official', 'nope.pth', 'o.safetensors', cwd=tmp_path)
    assert r.returncode != 0 and 'Traceback' in r.stderr


def test_every_command_has_help():
    for cmd in ('demo', 'convert-official', 'train', 'experiment'):
        r = run(cmd, '--help'); assert r.returncode == 0 and 'usage: mdf-loss' in r.stdout


def test_convert_official_matches_bundled(tmp_path, data_dir):
    r = run('convert-official', data_dir / 'mdf_official' / 'Ds_JPEG.pth', tmp_path / 'j.safetensors', '--task', 'jpeg')
    assert r.returncode == 0, r.stderr
    ours, bundled = MDFLoss.load(tmp_path / 'j.safetensors'), MDFLoss.from_pretrained('official-jpeg')
    for k, v in bundled.state_dict().items(): assert torch.equal(ours.state_dict()[k], v), k
    assert ours.meta['task'] == 'jpeg'


def test_convert_refuses_malicious_pickle(tmp_path):
    import pickle
    marker = tmp_path / 'pwned'
    class Evil:
        def __reduce__(self): return (subprocess.call, (['touch', str(marker)],))
    with open(tmp_path / 'evil.pth', 'wb') as f:
        for part in (0x1950a86a20f9469cfc6c, 1001, {'little_endian': True}, [Evil()], []): pickle.dump(part, f, protocol=2)
    r = run('convert-official', tmp_path / 'evil.pth', tmp_path / 'o.safetensors')
    # protocol 2 records subprocess.call under its Python 2 name, commands.call
    assert r.returncode == 2 and "refused to load global 'commands.call'" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / 'o.safetensors').exists()


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
    'a pickle with os.system': (lambda d: legacy_pickle([Marker('os.system', d / 'pwned')]), "refused to load global 'posix.system'"),
    'truncated legacy file': (lambda d: legacy_pickle([1])[:30], 'could not be parsed'),
    'records of the wrong structure': (lambda d: legacy_pickle([1, 2]), 'not a SinGAN WDiscriminator'),
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
