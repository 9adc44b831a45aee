"""Restoration experiments: train a small network with each loss and score it on held-out images.

`from mdf_loss.restoration import ExperimentConfig, run_experiment` is the entry point (what `mdf-loss experiment`
runs); the modules are `networks`, `data`, `trainer`, `report` and `experiment`. They need the `experiments` extra.
"""
__all__ = ['ExperimentConfig', 'run_experiment']


def __getattr__(name):  # imported on first use, so that `import mdf_loss.restoration.networks` stays light
    if name in __all__:
        from . import experiment
        return getattr(experiment, name)
    raise AttributeError(f"module 'mdf_loss.restoration' has no attribute {name!r}")
