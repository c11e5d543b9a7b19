"""Counter-based random numbers: Philox4x32-10, one key per image, the same integers on every device.

Why: a CPU ``torch.Generator`` per image made a GPU run wait for the CPU (draw, then copy) and
let CPU and GPU outputs agree only in distribution. Philox (Salmon et al., SC 2011; the generator
behind cuRAND and torch's CUDA backend) turns (key, counter) into four 32-bit words with integer
multiplies and xors, so a whole batch's numbers are one elementwise computation wherever the
images are, with the same integers on the CPU and the GPU, whatever the batch.

Layout: image b's key is the 64-bit hash of (seed, sample index, corruption, severity)
(:func:`corruptions.seeding.sample_seed`), low word first. Stream ``s`` (one per random quantity
an op draws: 0, 1, ...) of an image is the word sequence whose block ``j`` (words ``4j..4j+3``)
is Philox4x32-10 of the counter ``(j mod 2^32, j div 2^32, s, 0)``.

Transforms of the 32-bit words ``w`` (the same formulas on every backend):

* uniform in [0, 1): ``(w >> 8) * 2^-24``, 24 bits, as ``torch.rand``;
* standard normal, Box-Muller on the pair of words ``(w[2m], w[2m+1])``:
  ``u1 = ((w[2m] >> 8) + 1) * 2^-24`` in (0, 1], ``u2 = (w[2m+1] >> 8) * 2^-24``,
  ``z[2m] = sqrt(-2 ln u1) cos(2 pi u2)``, ``z[2m+1] = sqrt(-2 ln u1) sin(2 pi u2)`` in float32
  (so ``|z| <= sqrt(2 ln 2^24) = 5.77``; the mass beyond is 8e-9);
* integer in [0, n): ``(w * n) >> 32`` (multiply-shift; bias below n / 2^32);
* Poisson: inverse transform of a uniform (:mod:`corruptions.ops.noise`).

Backends: on the CPU a C kernel (``csrc/philox.c``, compiled at first use into the cache of
:mod:`corruptions.native`, loaded with ctypes: words and transforms in one pass); elsewhere, and
on a CPU without a C compiler, integer torch ops. Both give the same words; the float transforms
agree to a few float32 ulps (different libm). ``CORRUPTIONS_NATIVE``: ``auto`` (default; the C
kernel on the CPU, the torch ops with one warning if it cannot be built), ``0`` (torch ops
everywhere), ``1`` (the C kernel, raising if it cannot be built).
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from . import native
from .seeding import sample_seed

#: Names the random streams in a run's configuration: results drawn from other streams (the
#: per-image torch generators before 2026-11-30) are never resumed into or compared with these.
STREAMS = "philox4x32-10"
SOURCE = Path(__file__).with_name("csrc") / "philox.c"
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC"]
_MASK = 0xFFFFFFFF
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
_RAW, _UNIFORM, _NORMAL = 0, 1, 2  # the C kernel's transforms


def mode() -> str:
    """``CORRUPTIONS_NATIVE``: ``auto`` | ``0`` | ``1``."""
    value = os.environ.get("CORRUPTIONS_NATIVE", "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise ValueError(f"CORRUPTIONS_NATIVE must be auto, 0 or 1, got {value!r}")
    return value


def _build() -> ctypes.CDLL:
    cc = native.compiler("CC", "cc")
    name = native.build_name("corruptions_philox", SOURCE.read_text(), " ".join(CFLAGS), native.compiler_version(cc))
    library = native.cache_dir() / f"{name}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".{os.getpid()}.tmp")  # concurrent builds never load half a file
        result = subprocess.run([cc, *CFLAGS, str(SOURCE), "-o", str(partial), "-lm"], capture_output=True, text=True)
        if result.returncode:
            partial.unlink(missing_ok=True)
            raise RuntimeError((result.stderr.strip().splitlines() or ["compiler failed"])[0])
        os.replace(partial, library)
    lib = ctypes.CDLL(str(library))
    lib.philox4x32.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                               ctypes.c_void_p, ctypes.c_int]
    lib.philox4x32.restype = None
    return lib


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled C kernel (built on first call, then cached); None with one warning if it
    cannot be built, unless ``CORRUPTIONS_NATIVE=1``, which raises."""
    try:
        return _build()
    except Exception as err:  # no compiler, build error, unloadable library
        if mode() == "1":
            raise RuntimeError(f"CORRUPTIONS_NATIVE=1 but the Philox C kernel cannot be built: {err}") from err
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        warnings.warn(f"Philox C kernel unavailable ({first_line}); drawing random numbers with torch ops",
                      RuntimeWarning, stacklevel=2)
        return None


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of ``a * multiplier`` for 32-bit ``a`` held in int64, from
    16-bit pieces of the multiplier so that no int64 product overflows."""
    low_part = a * (multiplier & 0xFFFF)  # < 2^48
    high_part = a * (multiplier >> 16)  # < 2^48
    middle = low_part + ((high_part & 0xFFFF) << 16)  # < 2^49
    return (high_part >> 16) + (middle >> 32), middle & _MASK


def philox4x32(counter: Sequence[torch.Tensor], key: Sequence[torch.Tensor], rounds: int = 10) -> list[torch.Tensor]:
    """Philox4x32 with torch integer ops: four int64 tensors of 32-bit counter words and two of
    key words (broadcastable) -> the four output words. The reference of the C kernel."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(rounds):
        if round_:
            k0, k1 = (k0 + _WEYL[0]) & _MASK, (k1 + _WEYL[1]) & _MASK
        high0, low0 = _mulhilo(c0, _MULTIPLIERS[0])
        high1, low1 = _mulhilo(c2, _MULTIPLIERS[1])
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
    return [c0, c1, c2, c3]


def _torch_words(keys: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """(B, n) int64 words of ``stream`` for the (B, 2) keys, on the keys' device."""
    block = torch.arange((n + 3) // 4, device=keys.device, dtype=torch.int64).unsqueeze(0)
    counter = [block & _MASK, block >> 32, torch.full_like(block, stream), torch.zeros_like(block)]
    words = philox4x32(counter, [keys[:, :1], keys[:, 1:]])
    return torch.stack(torch.broadcast_tensors(*words), dim=2).flatten(1)[:, :n]


def _torch_uniform(words: torch.Tensor) -> torch.Tensor:
    return (words >> 8).to(torch.float32).mul_(2.0 ** -24)


def _torch_normal(words: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` normals from ``2 * ceil(n / 2)`` words (an odd ``n`` leaves a sine unused)."""
    pairs = words.reshape(words.shape[0], -1, 2)
    u1 = ((pairs[..., 0] >> 8) + 1).to(torch.float32).mul_(2.0 ** -24)
    u2 = (pairs[..., 1] >> 8).to(torch.float32)
    radius = u1.log_().mul_(-2.0).sqrt_()
    angle = u2.mul_(2.0 ** -24).mul_(_TWO_PI)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=2).flatten(1)[:, :n]


_TWO_PI = float(torch.tensor(2 * math.pi, dtype=torch.float32))  # 6.2831855f, the C kernel's constant


class Streams:
    """The random streams of a batch of images: one Philox key per image.

    Every draw takes ``stream``, the op's own number for the quantity drawn (0, 1, ...), so two
    draws of an op never share words, and returns one row per image.
    """

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.to("cpu", torch.int64).contiguous()  # (B, 2): 32-bit key words, as the C kernel reads them

    @classmethod
    def for_images(cls, seed: int, indices: Sequence[int], corruption: str, severity: int) -> Streams:
        """The streams of images ``indices`` under (seed, corruption, severity)."""
        hashes = [sample_seed(seed, int(i), corruption, severity) for i in indices]
        return cls(torch.tensor([[h & _MASK, h >> 32] for h in hashes], dtype=torch.int64).view(-1, 2))

    def __len__(self) -> int:
        return self.keys.shape[0]

    def __getitem__(self, rows: slice) -> Streams:
        return Streams(self.keys[rows])

    def _draw(self, n: int, stream: int, transform: int, device: torch.device) -> torch.Tensor:
        device = torch.device(device)
        lib = kernel() if device.type == "cpu" and mode() != "0" else None
        if lib is not None:
            out = torch.empty(len(self), n, dtype=torch.int64 if transform == _RAW else torch.float32)
            lib.philox4x32(self.keys.data_ptr(), len(self), n, stream, transform, out.data_ptr(),
                           torch.get_num_threads())
            return out
        if transform == _NORMAL:
            return _torch_normal(_torch_words(self.keys.to(device), n + n % 2, stream), n)
        words = _torch_words(self.keys.to(device), n, stream)
        return words if transform == _RAW else _torch_uniform(words)

    def words(self, n: int, stream: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, n) int64: each image's first ``n`` 32-bit words of ``stream``."""
        return self._draw(n, stream, _RAW, device)

    def uniform(self, shape: tuple[int, ...], stream: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, *shape) float32 uniforms in [0, 1) (24 bits)."""
        return self._draw(math.prod(shape), stream, _UNIFORM, device).view(len(self), *shape)

    def normal(self, shape: tuple[int, ...], stream: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, *shape) float32 standard normals (Box-Muller)."""
        return self._draw(math.prod(shape), stream, _NORMAL, device).view(len(self), *shape)

    def integers(self, high: int, stream: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B,) int64, one integer in [0, high) per image."""
        return (self.words(1, stream, device)[:, 0] * int(high)) >> 32
