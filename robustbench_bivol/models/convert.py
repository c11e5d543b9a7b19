"""Official RedNet checkpoints (mmcls, d-li14/involution) to our :mod:`.rednet` state_dict keys.

The official ``ImageClassifier`` nests the backbone under ``backbone.`` and the classifier
under ``head.fc``; its involution names the generator ``conv1`` (mmcv ConvModule: ``conv`` +
``bn``) and ``conv2`` (``conv`` with bias). Ours names them ``reduce``/``bn``/``span``::

    backbone.stem.1.conv1.conv.weight          -> stem.1.reduce.weight
    backbone.stem.1.conv1.bn.running_mean      -> stem.1.bn.running_mean
    backbone.layer3.2.conv2.conv2.conv.bias    -> layer3.2.conv2.span.bias
    backbone.layer1.0.downsample.1.weight      -> layer1.0.downsample.1.weight (unchanged)
    head.fc.weight                             -> fc.weight

Everything else (stem ConvModules, bottleneck convs/BNs, shortcuts) has the same names.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

#: the official involution modules: the stem's (``stem.1``) and each bottleneck's ``conv2``
_INVOLUTION = r"((?:^|\.)(?:stem\.1|layer\d+\.\d+\.conv2))"
_RULES = (
    (re.compile(_INVOLUTION + r"\.conv1\.conv\."), r"\1.reduce."),
    (re.compile(_INVOLUTION + r"\.conv1\.bn\."), r"\1.bn."),
    (re.compile(_INVOLUTION + r"\.conv2\.conv\."), r"\1.span."),
)


def convert_rednet_key(key: str) -> str | None:
    """Our name for one official key; ``None`` for keys that have no counterpart (e.g. ``neck.``)."""
    if key.startswith("head.fc."):
        return "fc." + key[len("head.fc."):]
    if not key.startswith("backbone."):
        return None
    key = key[len("backbone."):]
    for pattern, replacement in _RULES:
        key = pattern.sub(replacement, key)
    return key


def convert_rednet_checkpoint(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Official checkpoint (``{"state_dict": ...}`` or the state_dict itself) -> our state_dict.

    Also strips a ``module.`` prefix (DataParallel) and adds ``num_batches_tracked`` (0) to BN
    layers that lack it, as older checkpoints do. Load the result with
    :func:`.registry.load_state_dict_strict` to catch any mismatch.
    """
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = convert_rednet_key(key[len("module."):] if key.startswith("module.") else key)
        if new is not None:
            out[new] = value
    for key in [k for k in out if k.endswith(".running_mean")]:
        tracked = key[: -len("running_mean")] + "num_batches_tracked"
        out.setdefault(tracked, torch.tensor(0, dtype=torch.long))
    return out
