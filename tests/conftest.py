"""Shared test fixtures: where the repository and the shared data folder are."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    "The shared data folder ($MDF_LOSS_DATA, else ../shared/data beside the checkout), or None."
    env = os.environ.get('MDF_LOSS_DATA')
    p = Path(env) if env else ROOT.parent / 'shared' / 'data'
    return p if p.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    p = shared_data()
    if p is None: pytest.skip('shared data folder not found: set MDF_LOSS_DATA to run this test')
    return p
