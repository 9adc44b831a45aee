"""Every public method of the main classes is shown on an API page: nbdev documents exported functions and classes by
itself, but a method only where a notebook calls `show_doc` on it."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re

import pytest

from conftest import ROOT


def shown() -> set[str]:
    "The names the notebooks pass to `show_doc` (or the `name=` they show them under)."
    out = set()
    for p in (ROOT/'nbs').rglob('*.ipynb'):
        for c in json.loads(p.read_text())['cells']:
            for m in re.finditer(r"show_doc\(([\w.]+)(?:,\s*name='([\w.]+)')?", ''.join(c['source'])):
                out.add(m.group(2) or m.group(1))
    return out


def public_methods(cls) -> dict[str, type]:
    "Public methods and properties of `cls` defined in the package (its own or its package bases'): name -> owner."
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    out = {}
    for owner in reversed(cls.__mro__):
        if not owner.__module__.startswith('mdf_loss'): continue
        for name, v in vars(owner).items():
            if name.startswith('_') or name in fields: continue
            if callable(v) or isinstance(v, (property, classmethod, staticmethod)): out[name] = owner
    return out


def classes():
    from mdf_loss.loss import MDFLoss
    from mdf_loss.tasks import TaskSpec
    from mdf_loss.train_config import TrainConfig
    from mdf_loss.restoration.config import ExperimentConfig
    from mdf_loss.configs import JSONConfig
    from mdf_loss.runs import RunFolder
    from mdf_loss.baselines import LossEntry
    from mdf_loss.sampling import ScaleSampler
    return [MDFLoss, TaskSpec, TrainConfig, ExperimentConfig, JSONConfig, RunFolder, LossEntry, ScaleSampler]


@pytest.mark.parametrize('cls', classes(), ids=lambda c: c.__name__)
def test_every_public_method_is_shown(cls):
    seen = shown()
    missing = [f'{cls.__name__}.{name}' for name, owner in public_methods(cls).items()
               if f'{cls.__name__}.{name}' not in seen and f'{owner.__name__}.{name}' not in seen]
    assert not missing, f"no show_doc for {missing}: add one, with an example, to the class's notebook"


def test_the_registries_are_exported_functions():
    "The registries' functions are exported (so nbdev shows each with its signature and docments)."
    import mdf_loss.tasks as tasks, mdf_loss.baselines as baselines
    for mod, names in ((tasks, ('register_task', 'get_task', 'task_names')),
                       (baselines, ('register_loss', 'unregister_loss', 'get_loss', 'loss_names'))):
        for name in names:
            assert name in mod.__all__ and inspect.isfunction(getattr(mod, name)), f'{mod.__name__}.{name}'


def test_the_check_sees_a_missing_method():
    "The check above fails for a class with a method that no notebook shows."
    Fake = type('Fake', (), {'__module__': 'mdf_loss.fake', 'undocumented': lambda self: None})
    assert 'undocumented' in public_methods(Fake) and 'Fake.undocumented' not in shown()
