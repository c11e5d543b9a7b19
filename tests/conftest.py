"""Fixtures for every test."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded and single-threaded: on a 2-core CI machine two intra-op threads per test thrash
    (the operator tests ran 10x slower with them)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
