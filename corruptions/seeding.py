"""Per-image random streams that depend only on (seed, sample index, corruption, severity).

Hashing the tuple (rather than drawing from one global stream) is what makes a corrupted image
independent of batch size, batch composition, worker count and distributed rank. The hash keys
the torch backend's Philox streams (:mod:`corruptions.philox`) and seeds the reference backend's
NumPy generators.
"""
from __future__ import annotations

import hashlib

import numpy as np


def sample_seed(seed: int, index: int, corruption: str, severity: int) -> int:
    """A stable 63-bit seed for one image under one corruption and severity."""
    key = f"{int(seed)}|{int(index)}|{corruption}|{int(severity)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def numpy_rng(seed: int, index: int, corruption: str, severity: int) -> np.random.Generator:
    """A NumPy generator for one image (used by the reference backend)."""
    return np.random.default_rng(sample_seed(seed, index, corruption, severity))
