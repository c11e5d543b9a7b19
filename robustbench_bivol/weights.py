"""Where weights come from: bundled tags, local files, https URLs and torchvision enums.

Every source ends as ``(state_dict, CheckpointMeta)``. Files load with ``weights_only=True``
(:func:`checkpoint.load_checkpoint`); downloads and bundled files are checked against a sha256.
Bundled weights live in ``pretrained/`` next to ``manifest.json``, which records their hash
and how they were made.
"""
from __future__ import annotations

import fcntl
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint, sha256_of
from .errors import CheckpointError, UsageError
from .io import atomic_write_json

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
MANIFEST = PRETRAINED_DIR / "manifest.json"
#: file:// goes through the same download path, which is how the tests exercise it offline.
URL_SCHEMES = ("https://", "http://", "file://")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def manifest() -> dict[str, dict[str, dict[str, Any]]]:
    """``{arch: {tag: {file, sha256, dataset, test_accuracy, command}}}``."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}


def bundled_tags(arch: str) -> list[str]:
    return sorted(manifest().get(arch, {}))


def load_weights(source: str, arch: str) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Resolve ``source`` for architecture ``arch`` and check that it was made for it."""
    if source.startswith("torchvision:"):
        return torchvision_weights(source.split(":", 1)[1], arch)
    path = weights_file(source)
    if path is not None:
        state_dict, meta, _ = load_checkpoint(path)
    elif source in manifest().get(arch, {}):
        state_dict, meta, _ = load_checkpoint(_verified_bundled_file(arch, source))
    elif source.endswith((".pt", ".pth")) or "/" in source:
        raise CheckpointError(f"weights file not found: {source}")
    else:
        tags = bundled_tags(arch)
        raise UsageError(f"'{source}' is neither a file nor bundled weights of {arch} "
                         f"(bundled: {', '.join(tags) or 'none'}).")
    if meta.arch != arch:
        raise CheckpointError(f"weights '{source}' are for {meta.arch}, not {arch}.")
    return state_dict, meta


def weights_file(source: str) -> Path | None:
    """The local file behind ``source``: a URL downloaded with its hash checked, or an existing file;
    None for anything else (a bundled tag, an enum)."""
    if source.startswith(URL_SCHEMES):
        return download(source)
    return Path(source) if Path(source).is_file() else None


def _verified_bundled_file(arch: str, tag: str) -> Path:
    entry = manifest()[arch][tag]
    path = PRETRAINED_DIR / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"bundled weights {arch}:{tag} are missing from the installation ({path}).")
    if sha256_of(path) != entry["sha256"]:
        raise CheckpointError(f"bundled weights {path} fail their sha256 check; reinstall the package.")
    return path


def download(url: str) -> Path:
    """Download into torch hub's cache with a hash check.

    The expected sha256 comes from a ``#sha256=<hex>`` fragment, or else from torch hub's file
    naming convention (``name-<first hex digits of sha256>.pt``). A URL with neither is refused:
    an unchecked download is not reproducible.
    """
    url, _, fragment = url.partition("#")
    expected = fragment.split("=", 1)[1].lower() if fragment.startswith("sha256=") else None
    filename = url.rsplit("/", 1)[-1].split("?")[0]
    if expected is None:
        match = re.search(r"-([a-f0-9]{6,})\.", filename)
        if match is None:
            raise UsageError(f"{url}: give the expected hash as '#sha256=<hex>' (unchecked downloads are refused).")
        expected = match.group(1)
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), hash_prefix=None, progress=sys.stderr.isatty())
        except Exception as exc:  # network errors have many types; all mean the same to a user
            raise CheckpointError(f"cannot download {url}: {exc}") from None
    actual = sha256_of(target)
    if not actual.startswith(expected):
        target.unlink()
        raise CheckpointError(f"{url}: sha256 mismatch (expected {expected[:16]}..., got {actual[:16]}...); "
                              "the file was deleted.")
    return target


def torchvision_weights(enum_name: str, arch: str) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """torchvision's own weights, e.g. ``torchvision:IMAGENET1K_V1`` for ``resnet50``; the enum's
    transforms give the input size, resize, mean and std."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch)[enum_name]
    except (ValueError, KeyError):
        raise UsageError(f"torchvision has no weights '{enum_name}' for {arch}.") from None
    try:
        state_dict = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:
        raise CheckpointError(f"cannot fetch torchvision weights {weights}: {exc}") from None
    transforms = weights.transforms()
    meta = CheckpointMeta(arch=arch, num_classes=len(weights.meta["categories"]),
                          input_size=int(transforms.crop_size[0]), resize=int(transforms.resize_size[0]),
                          mean=tuple(transforms.mean), std=tuple(transforms.std), dataset="imagenet",
                          classes=list(weights.meta["categories"]),
                          provenance={"source": f"torchvision {weights}", "url": weights.url})
    return state_dict, meta


def bundle_checkpoint(checkpoint: str | Path, tag: str) -> Path:
    """Copy a trained checkpoint into the package as bundled weights ``tag`` (maintainers only)."""
    state_dict, meta, _ = load_checkpoint(checkpoint)
    target = PRETRAINED_DIR / f"{meta.arch}-{tag}.pt"
    save_checkpoint(target, state_dict, meta)  # weights and metadata only, no optimizer state
    with open(PRETRAINED_DIR / ".manifest.lock", "w") as lock:  # trainings may finish together
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = manifest()
        data.setdefault(meta.arch, {})[tag] = {
            "file": target.name, "sha256": sha256_of(target), "bytes": target.stat().st_size,
            "dataset": meta.dataset, "test_accuracy": meta.provenance.get("test_accuracy"),
            "command": meta.provenance.get("command"),
        }
        atomic_write_json(MANIFEST, data)
    return target
