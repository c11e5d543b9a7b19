"""Per-image random streams that depend only on (seed, sample index, corruption, severity).

Hashing the tuple (rather than drawing from one global stream) is what makes a corrupted image
independent of batch size, batch composition, worker count and distributed rank.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def sample_seed(seed: int, index: int, corruption: str, severity: int) -> int:
    """A stable 63-bit seed for one image under one corruption and severity."""
    key = f"{int(seed)}|{int(index)}|{corruption}|{int(severity)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def numpy_rng(seed: int, index: int, corruption: str, severity: int) -> np.random.Generator:
    """A NumPy generator for one image (used by the reference backend)."""
    return np.random.default_rng(sample_seed(seed, index, corruption, severity))


def torch_generator(seed: int, index: int, corruption: str, severity: int) -> torch.Generator:
    """A CPU torch generator for one image (random numbers are drawn on the CPU, then moved)."""
    return torch.Generator().manual_seed(sample_seed(seed, index, corruption, severity))
