"""The toolkit's one checkpoint format: a state_dict plus the metadata needed to use it.

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``: a checkpoint can never execute code on load.
"""
from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .io import atomic_write_bytes

FORMAT_VERSION = 1


@dataclass
class CheckpointMeta:
    """What a user of the weights must know: which model, which inputs, where they came from."""

    arch: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dataset: str
    classes: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Shorter side before the centre crop to ``input_size`` (timm's crop_pct, torchvision's
    #: resize_size); None: the toolkit's default (256 for 224, the size itself below 128).
    resize: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckpointMeta":
        try:
            return cls(
                arch=str(data["arch"]),
                num_classes=int(data["num_classes"]),
                input_size=int(data["input_size"]),
                mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                dataset=str(data["dataset"]),
                classes=list(data.get("classes", [])),
                provenance=dict(data.get("provenance", {})),
                resize=None if data.get("resize") is None else int(data["resize"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint metadata is incomplete or malformed ({exc}).") from None


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    meta: CheckpointMeta,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write atomically (temp file + rename), so an interrupted save never leaves half a file."""
    payload = {
        "format_version": FORMAT_VERSION,
        "meta": asdict(meta),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if extra:
        payload["extra"] = extra
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta, dict[str, Any]]:
    """Read a checkpoint safely; returns (state_dict, meta, extra)."""
    path = Path(path)
    payload = load_safely(path)
    if not isinstance(payload, dict) or "state_dict" not in payload or "meta" not in payload:
        raise CheckpointError(
            f"{path} is not a robustbench_bivol checkpoint (expected keys 'state_dict' and 'meta')."
        )
    return payload["state_dict"], CheckpointMeta.from_dict(payload["meta"]), payload.get("extra", {})


def load_safely(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` of any file (a checkpoint or a plain state_dict), with a
    one-line error for what cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warnings would break the one-line error
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or file corrupt: both are the user's to fix
        raise CheckpointError(
            f"cannot load checkpoint {path} safely (weights_only=True): {_load_failure(exc)}; only tensors and "
            "plain values are accepted (corrupt file, or a pickled object: re-save its state_dict)"
        ) from None
    return payload


def _load_failure(exc: Exception) -> str:
    """The useful part of torch.load's (long, multi-line) refusal: what the unpickler rejected."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:  # skip torch's advice to retry with weights_only=False
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
        text = re.split(r"\. Please use|\n\s*\n", text, maxsplit=1)[0]
    first = text.splitlines()[0].strip() if text else type(exc).__name__
    return first[:200]


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
