"""Names and groups of the ImageNet-C corruptions, and validated selection.

One list drives everything: a typo in a corruption name must be an error, never a corruption
silently dropped from mCE (a pitfall seen in public evaluation scripts).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog"),
    "digital": ("brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
#: The 15 benchmark corruptions, in the order of Hendrycks & Dietterich (2019); mCE uses these only.
BENCHMARK: tuple[str, ...] = tuple(name for names in GROUPS.values() for name in names)
#: The 4 held-out "validation" corruptions; never part of mCE.
EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL: tuple[str, ...] = BENCHMARK + EXTRA
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_SETS: dict[str, tuple[str, ...]] = {"benchmark": BENCHMARK, "extra": EXTRA, "all": ALL, **GROUPS}


class UnknownCorruptionError(ValueError):
    """A corruption, group or severity that does not exist; the message suggests a fix."""


def group_of(name: str) -> str:
    """The benchmark group of a corruption; the extra corruptions form the group 'extra'."""
    name = validate(name)
    for group, names in GROUPS.items():
        if name in names:
            return group
    return "extra"


def validate(name: str) -> str:
    """Return ``name`` if it is a known corruption, else raise with the closest match."""
    if name in ALL:
        return name
    close = difflib.get_close_matches(name, list(ALL) + list(_SETS), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownCorruptionError(
        f"unknown corruption '{name}'.{hint} Choose from: {', '.join(ALL)} "
        f"or a set: {', '.join(_SETS)}."
    )


def validate_severity(severity: int) -> int:
    """Severities are the integers 1..5 of ImageNet-C."""
    if severity not in SEVERITIES:
        raise UnknownCorruptionError(f"severity must be one of 1..5, got {severity}.")
    return int(severity)


def select(spec: str | Iterable[str]) -> list[str]:
    """Expand names and sets ('benchmark', 'extra', 'all', a group) into corruption names.

    ``spec`` may be a comma-separated string or an iterable of such items. Order follows
    :data:`ALL` and duplicates are removed, so the same selection always yields the same list.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        chosen.update(_SETS[item] if item in _SETS else (validate(item),))
    if not chosen:
        raise UnknownCorruptionError("no corruption selected.")
    return [name for name in ALL if name in chosen]
