"""Shared test fixtures: where the repository and the shared data folder are, and one torch thread for small work."""
from pathlib import Path

import pytest
import torch

from mdf_loss.core import data_dir as find_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    "The shared data folder; the test is skipped, with the reason shown, where it is absent."
    p = find_data()
    if p is None: pytest.skip('shared data folder not found: set MDF_LOSS_DATA to run this test')
    return p


@pytest.fixture
def one_thread():
    "Small convolutions gain nothing from a second thread, and on a shared machine two spinning OpenMP threads can be 100x slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
