"""One source for every option: the settings dataclasses make the command line's options (their comments the help) and
the `command()` line, a field added to a config is an option with nothing else edited, old flags keep working, and
settings are checked before anything is printed or written."""
from __future__ import annotations

import argparse, dataclasses, shlex
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from mdf_loss.adversarial import TrainConfig
from mdf_loss.cli import (build_parser, experiment_arguments, experiment_config_from_args, train_arguments,
                          train_config_from_args)
from mdf_loss.configs import ConfigError, field_docs
from mdf_loss.demo import DemoConfig
from mdf_loss.restoration.experiment import ExperimentConfig



@dataclasses.dataclass
class TrainWithEma(TrainConfig):
    ema: float = 0.0  # decay of an exponential moving average of the critic's weights; 0: none


@dataclasses.dataclass
class ExperimentWithWarmup(ExperimentConfig):
    warmup: int = 0  # steps of linear learning-rate warm-up at the start of each run
    schedule: tuple = ('constant',)  # learning-rate schedules to compare


def _help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    action = next(a for a in parser._actions if flag in a.option_strings)
    return action.help


def test_a_field_added_to_train_config_is_an_option_and_in_the_command():
    parser = train_arguments(argparse.ArgumentParser(), TrainWithEma)
    assert _help_of(parser, '--ema').startswith("decay of an exponential moving average of the critic's weights")
    cfg, out = train_config_from_args(parser.parse_args(['--task', 'jpeg', '--ema', '0.99', '--out', 'r']), TrainWithEma)
    assert (cfg.ema, cfg.task, out) == (0.99, 'jpeg', Path('r'))
    assert '--ema 0.99' in cfg.command()
    again, _ = train_config_from_args(parser.parse_args(shlex.split(cfg.command())[2:]), TrainWithEma)
    assert again == cfg
    assert '--ema' not in TrainWithEma(task='jpeg', preset='quick', max_size=64, iters=300).command()  # at its default


def test_a_field_added_to_experiment_config_is_an_option_and_in_the_command():
    parser = experiment_arguments(argparse.ArgumentParser(), ExperimentWithWarmup)
    assert _help_of(parser, '--warmup') == 'steps of linear learning-rate warm-up at the start of each run (default: 0)'
    args = parser.parse_args(['--task', 'denoise', '--train', 'tr', '--test', 'a', '--warmup', '20',
                              '--schedule', 'constant,cosine'])
    cfg = experiment_config_from_args(args, cls=ExperimentWithWarmup)
    assert (cfg.warmup, cfg.schedule) == (20, ('constant', 'cosine'))
    assert '--warmup 20 --schedule constant,cosine' in cfg.command()
    assert experiment_config_from_args(parser.parse_args(shlex.split(cfg.command())[2:]), cls=ExperimentWithWarmup) == cfg


def test_every_field_has_help_and_an_option():
    for cls in (TrainConfig, ExperimentConfig, DemoConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert not missing, f'{cls.__name__} fields without a comment: {missing}'
    sub = {a.dest: a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)}['command'].choices
    for name, cls in (('train', TrainConfig), ('experiment', ExperimentConfig), ('demo', DemoConfig)):
        flags = {s for a in sub[name]._actions for s in a.option_strings}
        for o in cls.options():
            expected = list(o.keys.values()) if o.keys else [] if o.strength and not o.mapping else [o.flag]
            assert set(expected) <= flags, (name, o.name, expected)
        assert all(a.help for a in sub[name]._actions), [a.option_strings for a in sub[name]._actions if not a.help]


def test_train_commands_parse_back_to_the_same_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path); Image.new('RGB', (64, 48)).save('photo.png')
    parser = train_arguments(argparse.ArgumentParser())
    for cfg in [TrainConfig.from_preset('medium', task='denoise', distortion={'sigma': 50}, lr=1e-3, betas=(0.5, 0.9),
                                        fixed_rec_noise=True, value_range=(0.0, 1.0), min_size=20, device='cpu',
                                        on_divergence='restart', arithmetic='v0', seed=7, image='photo.png'),
                TrainConfig.from_preset('paper', task='jpeg', distortion={'quality': 30}, scale_factor=0.8, nfc=16),
                TrainConfig.from_preset('quick', task='custom', custom_fn='mymod:fn', distortion={'amount': 0.05,
                                                                                                   'name': 'sp'})]:
        back, _ = train_config_from_args(parser.parse_args(shlex.split(cfg.command())[2:]))
        assert back == cfg, (cfg.command(), back)


def test_experiment_commands_parse_back_to_the_same_settings():
    parser = experiment_arguments(argparse.ArgumentParser())
    cfg = ExperimentConfig(task='jpeg', strength=30, losses='l1,l1+mdf-official', train_dir='tr', test_dirs=['a', 'b c'],
                           preset='smoke', steps=4, networks='dncnn', protocols='scratch,finetune', sweep=True,
                           lr_grid=(1e-3, 3e-4), select_by='ssim', html=True, mdf_path='m.safetensors',
                           weight_paths={'vgg16': 'v.pth', 'lpips-alex': 'alex.pth'}, device='cpu', val_crops=3,
                           train_scale=0.25)
    assert experiment_config_from_args(parser.parse_args(shlex.split(cfg.command())[2:])) == cfg, cfg.command()


def test_the_flags_of_version_0_2_keep_their_meaning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path); Image.new('RGB', (64, 48)).save('p.png')
    old = ('--task sisr --losses l1,mdf-official --train tr --test a b --preset smoke --out o --seed 3 --factor 2 '
           '--steps 6 --patch 16 --batch 2 --lr 0.002 --max-train-images 4 --max-test-images 2 --networks srresnet '
           '--protocol finetune --sweep --lr-grid 1e-3,3e-4 --select-by psnr --html --mdf-weights m.safetensors '
           '--vgg16-weights v.pth --alexnet-weights a.pth --lpips-weights l.pth --device cpu --threads 1 --no-progress')
    cfg = experiment_config_from_args(experiment_arguments(argparse.ArgumentParser()).parse_args(old.split()))
    assert cfg == ExperimentConfig(task='sisr', losses=('l1', 'mdf-official'), train_dir='tr', test_dirs=('a', 'b'),
                                   preset='smoke', out_dir='o', seed=3, strength=2, steps=6, patch=16, batch=2, lr=0.002,
                                   max_train_images=4, max_test_images=2, networks=('srresnet',),
                                   protocols=('finetune',), sweep=True, lr_grid=(1e-3, 3e-4), select_by='psnr', html=True,
                                   mdf_path='m.safetensors', device='cpu',
                                   weight_paths={'vgg16': 'v.pth', 'alexnet': 'a.pth', 'lpips-alex': 'l.pth'})
    old = ('--task denoise --sigma 50 --image p.png --preset medium --out r --seed 2 --iters 9 --max-size 40 '
           '--device cpu --on-divergence restart --threads 1 --no-progress')
    cfg, out = train_config_from_args(train_arguments(argparse.ArgumentParser()).parse_args(old.split()))
    assert (cfg.task, cfg.distortion, cfg.image, cfg.preset, cfg.seed, cfg.iters, cfg.max_size, cfg.device,
            cfg.on_divergence, out) == ('denoise', {'sigma': 50.0}, 'p.png', 'medium', 2, 9, 40, 'cpu', 'restart', Path('r'))


def test_library_errors_name_fields_and_the_command_line_names_flags():
    with pytest.raises(ConfigError) as e: ExperimentConfig(steps=0)
    assert e.value.field == 'steps' and str(e.value).startswith('steps must be a positive integer')
    parser = experiment_arguments(argparse.ArgumentParser())
    with pytest.raises(ValueError, match=r'^--steps must be a positive integer'):
        experiment_config_from_args(parser.parse_args(['--task', 'denoise', '--train', 't', '--test', 'a', '--steps', '0']))
    with pytest.raises(ValueError, match=r'^--out must be'):
        from mdf_loss.cli import flag_message
        raise ValueError(flag_message(ConfigError('out_dir must be a folder', 'out_dir'), ExperimentConfig))


_run = run_cli


@pytest.mark.parametrize('args, words', [(('--steps', '-5'), '--steps must be at least 1, got -5'),
                                         (('--size', '-3'), '--size must be at least 16 pixels, got -3'),
                                         (('--train-iters', '-1'), '--train-iters must be 0')])
def test_demo_checks_its_settings_before_printing_or_writing(tmp_path, args, words):
    r = _run('demo', '--out', tmp_path / 'demo', *args, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == '', (r.stdout, r.stderr)
    assert r.stderr.startswith(f'mdf-loss demo: error: {words}'), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / 'demo').exists()


def test_warnings_are_one_clean_line(tmp_path):
    Image.new('L', (8, 8), 128).save(tmp_path / 'gray8.png')
    r = _run('train', '--task', 'denoise', '--image', 'gray8.png', '--out', 'run', '--no-progress', cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert lines[0] == 'mdf-loss train: warning: gray8.png: grayscale image converted to RGB', lines
    assert lines[1].startswith('mdf-loss train: error: image 8 x 8 is smaller than the coarsest level'), lines
    assert len(lines) == 2, lines


def test_moved_names_still_work_with_a_deprecation_warning():
    import mdf_loss.baselines, mdf_loss.configs, mdf_loss.weights
    import mdf_loss.restoration.data as data
    with pytest.warns(DeprecationWarning, match='mdf_loss.configs.JSONConfig'):
        assert mdf_loss.weights.JSONConfig is mdf_loss.configs.JSONConfig
    with pytest.warns(DeprecationWarning, match='LOSS_PRESETS'):
        assert mdf_loss.baselines.PRESETS is mdf_loss.baselines.LOSS_PRESETS
    with pytest.warns(DeprecationWarning, match='DATA_STREAMS'):
        assert data.STREAMS is data.DATA_STREAMS
