"""One process of benchmarks/sweep_l1_alone.py: the recorded experiment rebuilt by whichever `mdf_loss` is imported.

It imports nothing else from benchmarks/, so that it runs under the current package or under the code of an older
revision put first on PYTHONPATH (the `mdf_loss` folder of that revision, extracted with `git archive`). Both
interfaces of the restoration experiment are spoken: `mdf_loss.restoration.experiment` (`ExperimentConfig`,
`Experiment(cfg)`, 0.2 on) and the single module `mdf_loss.restoration` of 0.1 (`Experiment(task, losses, ...)`).

For each network: the finetune protocol's L1 pre-training (half the steps), the plain `l1` loss for the other half at a
tenth of the lr (the w = 0 candidate: no MDF term), the validation score the sweeps select by, and the test scores;
then, if asked ("recheck": {network: {swept loss: [weights]}}), those recorded candidates again from the same
pre-training, with their validation scores.

Usage (the spec is JSON): python benchmarks/l1_alone_worker.py '{"command": "mdf-loss experiment ...", "data": DIR,
           "work": DIR, "steps": null, "threads": 1, "networks": ["dncnn"], "recheck": {"dncnn": {"l1+mdf": [0.001]}}}'
           -> JSON on stdout
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch

DATA_MARKERS = ('$MDF_LOSS_DATA/', 'shared/data/')


def local_path(path, data) -> str:
    "A data folder of a recorded command on this machine: the part after `shared/data/` (or `$MDF_LOSS_DATA/`) under `data`."
    p = str(path).replace('\\', '/')
    for marker in DATA_MARKERS:
        if marker in p: return str(Path(data)/p.split(marker, 1)[1])
    return str(path)


def recorded_arguments(command: str, data, out_dir, steps: int | None = None):
    "The arguments of a recorded `mdf-loss experiment` command, parsed by the imported package's own parser, with its data folders on this machine."
    from mdf_loss.cli import build_parser
    argv = shlex.split(command)
    if argv[:2] != ['mdf-loss', 'experiment']: raise ValueError(f"not an mdf-loss experiment command: {command!r}")
    args = build_parser().parse_args(argv[1:])
    # the parser's names: train_dir, test_dirs and out_dir from 0.3 on (the fields of ExperimentConfig); train, test, out before
    train, test, out = (next(n for n in names if hasattr(args, n)) for names in
                        (('train_dir', 'train'), ('test_dirs', 'test'), ('out_dir', 'out')))
    setattr(args, train, Path(local_path(getattr(args, train), data)))
    setattr(args, test, [Path(local_path(t, data)) for t in getattr(args, test)])
    setattr(args, out, Path(out_dir))
    if steps is not None: args.steps = steps
    return args


class Rebuilt:
    "The recorded experiment under the imported package, whichever interface it has."
    def __init__(self, args):
        try: from mdf_loss.restoration import experiment as _  # noqa: F401  (0.2 on: a package of modules)
        except ImportError: self._old(args)
        else: self._new(args)

    def _new(self, args):
        from mdf_loss.cli import experiment_config_from_args
        from mdf_loss.restoration.experiment import Experiment
        cfg = experiment_config_from_args(args)
        self.api, self.exp = 'ExperimentConfig (0.2 on)', Experiment(cfg, progress=False, command=cfg.command())
        self.steps, self.select_by, self.command = cfg.steps, cfg.select_by, cfg.command()
        self.settings = cfg.settings

    def _old(self, args):
        from mdf_loss import restoration as r
        paths = {k: v for k, v in {'vgg16': args.vgg16_weights, 'alexnet': args.alexnet_weights, 'lpips-alex': args.lpips_weights}.items() if v}
        self.api = 'restoration.Experiment(task, ...) (0.1)'
        self.exp = r.Experiment(args.task, args.losses, args.train, args.test, args.preset, args.out, args.seed, args.steps,
                                r._csv(args.networks, what='--networks'), args.protocol, args.sweep,
                                r._csv(args.lr_grid, float, '--lr-grid'), args.select_by, args.html, args.mdf_weights, paths,
                                args.max_train_images, args.max_test_images, args.device, False, r.experiment_command(args))
        self.steps, self.select_by, self.command = self.exp.cfg['steps'], self.exp.select_by, self.exp.command
        self.settings = dict(self.exp.cfg)
        self._score = lambda m: r._validation_score(m, self.exp.val, self.exp.variants, self.exp.select_by, self.exp.shave)

    def _score_of(self, model) -> float:
        return self._score(model) if hasattr(self, '_score') else self.exp._validation_score(model)

    def finetune(self, network: str, pre, loss_name: str, weight) -> dict:
        "One candidate of the finetune protocol from the pre-trained `pre`: trained, then scored on the validation crops."
        t0 = time.perf_counter()
        cand, = self.exp.train_candidates(network, 'finetune', loss_name, [weight], pre)  # one: the experiment scores none
        get = cand.get if isinstance(cand, dict) else lambda k, d=None: getattr(cand, k, d)
        model = get('model')
        if model is None: raise FloatingPointError(f'{network}: fine-tuning with {get("loss")} diverged: {get("error")}')
        train_s = time.perf_counter() - t0
        return {'loss': get('loss'), 'weight': weight, 'lr': get('lr'), 'finetune_lr': get('lr')*0.1,
                'steps': self.steps - self.steps//2, 'select_by': self.select_by, 'score': self._score_of(model),
                'final_loss': get('final_loss'), 'history': get('history'), 'model': model,
                'seconds': {'finetune': train_s, 'total': time.perf_counter() - t0}}

    def l1_alone(self, network: str, recheck: dict | None = None) -> dict:
        """Pretrain with L1, fine-tune with the plain `l1` loss (the w = 0 candidate), score it on the validation crops
        and the test sets; and retrain the candidates `recheck` = {swept loss: [weights]} from the same pre-training."""
        t0 = time.perf_counter()
        pre = self.exp.pretrain(network)
        pre_s = time.perf_counter() - t0
        out = self.finetune(network, pre, 'l1', None)
        out['test'] = self.exp.evaluate(out.pop('model'))
        out['seconds'] = {'pretrain': pre_s, **out['seconds'], 'total': time.perf_counter() - t0}
        out['rechecked'] = []
        for loss_name, weights in (recheck or {}).items():
            for w in weights:
                print(f'{network}: retraining the recorded candidate {loss_name} at w={w:g}', file=sys.stderr, flush=True)
                c = self.finetune(network, pre, loss_name, w)
                c.pop('model'); c.pop('history')
                out['rechecked'].append({'swept': loss_name, **c})
        return out


def main(argv=None):
    spec = json.loads((argv or sys.argv[1:])[0])
    if spec.get('threads'): torch.set_num_threads(spec['threads'])
    import mdf_loss
    args = recorded_arguments(spec['command'], spec['data'], spec['work'], spec.get('steps'))
    rebuilt = Rebuilt(args)
    exp = rebuilt.exp
    out = {'mdf_loss_version': mdf_loss.__version__, 'mdf_loss_path': str(Path(mdf_loss.__file__).resolve().parent),
           'api': rebuilt.api, 'torch_threads': torch.get_num_threads(), 'rebuilt_command': rebuilt.command,
           'settings': rebuilt.settings, 'train_images': len(exp.train_paths), 'validation_images': len(exp.val_paths),
           'test_sets': {n: [im.name for im in ims] for n, ims in exp.tests.items()}, 'networks': {}}
    for network in spec['networks']:
        print(f"{args.task} {network}: pretrain l1 {rebuilt.steps//2} steps, finetune l1 {rebuilt.steps - rebuilt.steps//2} "
              f"steps (mdf_loss {mdf_loss.__version__})", file=sys.stderr, flush=True)
        out['networks'][network] = rebuilt.l1_alone(network, spec.get('recheck', {}).get(network))
    print(json.dumps(out))


if __name__ == '__main__':
    main()
