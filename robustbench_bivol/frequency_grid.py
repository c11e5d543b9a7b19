"""The 2-D frequencies of an H x W image and their conjugate pairs, for the Fourier heat maps.

Its own module because both the run (:mod:`.fourier`: which frequencies to evaluate) and the
figures (:mod:`.fourier_plots`: where each lands on the map) need it.
"""
from __future__ import annotations


def frequencies(size: int) -> range:
    """Signed frequencies of one axis, low frequency in the middle: -N/2 .. N/2 - 1 (even N)."""
    return range(-(size // 2), (size - 1) // 2 + 1)


def _wrap(f: int, size: int) -> int:
    """The signed frequency equal to ``f`` modulo ``size``."""
    return (f + size // 2) % size - size // 2


def conjugate(i: int, j: int, height: int, width: int) -> tuple[int, int]:
    """The frequency whose basis image equals U(i, j): (-i, -j), wrapped into range."""
    return _wrap(-i, height), _wrap(-j, width)


def representative(i: int, j: int, height: int, width: int) -> tuple[int, int]:
    """The frequency of the pair {(i, j), (-i, -j)} in the evaluated half-plane: the one with
    the larger (j, i), i.e. j > 0, or i >= -i on the self-conjugate columns (j = 0 and, for
    even W, j = -W/2)."""
    ci, cj = conjugate(i, j, height, width)
    return (i, j) if (j, i) >= (cj, ci) else (ci, cj)


def half_plane(height: int, width: int, stride: int = 1) -> list[tuple[int, int]]:
    """The representative frequencies whose i and j are multiples of ``stride``; 514 at 32 x 32."""
    return [(i, j) for j in frequencies(width) for i in frequencies(height)
            if representative(i, j, height, width) == (i, j) and i % stride == 0 and j % stride == 0]
