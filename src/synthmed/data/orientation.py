"""Label-safe augmentation: no flip or rotation where a side or the orientation carries the label.

``orientation_sensitive(class_names, orientation_matters)`` decides whether flips/rotations may change the label:
``data.orientation_matters`` wins when set; else a class name that names a side ("kidney-left", "R_lung",
"OD"/"OS" eyes, "dextrocardia", laterality words) makes the dataset sensitive. Names are split into word tokens
(on non-letters and camelCase) and compared whole, so "lymphocyte" or "bright" never match "l" or "right".

``safe_augmentations(cfg, class_names)`` finds every flip/rotation setting that the run would use (the classifier's
``classifier.augment``, the active generator's ``hflip``/``vflip``/``rot90``, and any of them in ``run.policies`` or
``sweep.grid``). When orientation matters, a setting the user turned on explicitly (pydantic ``model_fields_set``)
is a one-line ``ConfigError`` naming it; one that is on by default is turned off with a warning note. It returns the
(possibly) changed config, the notes, and the augmentations that will run (for the data summary and the report).

Call it on the config as loaded from YAML / ``--set`` (before ``with_overrides`` or a save/reload, which mark every
field as set). Pure: it imports no stage code and reads no files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from synthmed.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from synthmed.config import Config

# Whole tokens (lowercase) that name a side of the body or the eye.
SIDE_WORDS = frozenset({
    "left", "right", "lt", "rt", "links", "rechts", "gauche", "droite", "izquierdo", "izquierda", "derecho", "derecha",
    "laterality", "ipsilateral", "contralateral",
    "sinister", "sinistra", "sinistrum", "dexter", "dextra", "dextrum",
    "dextrocardia", "levocardia", "situs",
})
# Tokens built on a side: dextroscoliosis, levoposition, dextrorotation, sinistral ... (not "dextrose")
SIDE_PATTERN = re.compile(r"(dextro|levo)(cardia|scolio|posi|pos|version|rotat|convex)[a-z]*|sinistr[a-z]*")
# Single letters and eye abbreviations: only as separate tokens; OD/OS only when written in capitals.
SIDE_LETTERS = frozenset({"l", "r"})
EYE_SIDES = frozenset({"OD", "OS"})

# Settings that flip or rotate images, wherever a config section has them (classifier.augment, generator.<kind>).
FLIPS = ("hflip", "vflip", "rot90")
WHY = {"hflip": "a horizontal flip swaps left and right",
       "vflip": "a vertical flip mirrors the image (with a 180-degree turn it is a left-right flip)",
       "rot90": "a rotation changes the orientation the label depends on"}


class AugmentationPlan(NamedTuple):
    """What ``safe_augmentations`` returns: the config to run, warning notes, the augmentations that will run."""

    config: Any
    notes: list[str]
    active: list[str]


def _tokens(name: str) -> list[tuple[str, bool]]:
    """Word tokens of a class name with whether a digit follows (``L1`` is a lumbar vertebra, not 'left')."""
    out = []
    for m in re.finditer(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", name):
        nxt = name[m.end(): m.end() + 1]
        out.append((m.group(), nxt.isdigit()))
    return out


def side_word(name: str) -> str | None:
    """The token of ``name`` that names a side, or None."""
    for tok, digit_follows in _tokens(str(name)):
        low = tok.lower()
        if low in SIDE_WORDS or SIDE_PATTERN.fullmatch(low):
            return tok
        if low in SIDE_LETTERS and not digit_follows:
            return tok
        if tok in EYE_SIDES:
            return tok
    return None


def orientation_sensitive(class_names: Iterable[str], orientation_matters: bool | None) -> tuple[bool, str]:
    """(whether flips/rotations may change the label, why): the setting wins, else a class name naming a side."""
    if orientation_matters is not None:
        return bool(orientation_matters), f"data.orientation_matters is {'true' if orientation_matters else 'false'}"
    for name in class_names:
        word = side_word(name)
        if word is not None:
            return True, f"class '{name}' names a side ('{word}')"
    return False, "no class name names a side"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'classifier.augment': {'hflip': True}} -> {'classifier.augment.hflip': True}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _flip_keys(cfg: Config) -> list[tuple[str, Any, str]]:
    """(dotted key, owning sub-model, field) of every flip/rotation the run would use."""
    keys = []
    kind = cfg.generator.kind
    for prefix, section in (("classifier.augment", cfg.classifier.augment),
                            (f"generator.{kind}", getattr(cfg.generator, kind, None))):
        fields = type(section).model_fields if section is not None else {}
        keys += [(f"{prefix}.{f}", section, f) for f in FLIPS if f in fields]
    return keys


def _refuse(key: str, where: str, reason: str) -> ConfigError:
    field = key.rsplit(".", 1)[-1]
    return ConfigError(f"{where}{key}=true is refused: {WHY[field]}, and {reason}; set {key}=false, or set "
                       f"data.orientation_matters=false if orientation does not carry the label")


def _check_overrides(cfg: Config, flip_keys: set[str], reason: str) -> None:
    """Flips turned on per policy (``run.policies``) or in the grid (``sweep.grid``) are explicit: refuse them."""
    for name, overrides in (cfg.run.policies or {}).items():
        for key, value in _flatten(overrides or {}).items():
            if key in flip_keys and value not in (False, None, 0, "false", "False"):
                raise _refuse(key, f"run.policies.{name}: ", reason)
    for key, values in (cfg.sweep.grid or {}).items():
        if key in flip_keys and any(v not in (False, None, 0, "false", "False") for v in values or []):
            raise _refuse(key, "sweep.grid: ", reason)


def active_augmentations(cfg: Config) -> list[str]:
    """The augmentations the run's generator and classifier will apply, as dotted settings (report / data summary)."""
    out = [key for key, model, f in _flip_keys(cfg) if getattr(model, f)]
    aug = cfg.classifier.augment
    out += [f"classifier.augment.{f}={getattr(aug, f):g}" for f in ("brightness", "contrast") if getattr(aug, f) > 0]
    out += [f"classifier.{f}={getattr(cfg.classifier, f):g}" for f in ("mixup", "cutmix") if getattr(cfg.classifier, f) > 0]
    return out


def safe_augmentations(cfg: Config, class_names: Iterable[str]) -> AugmentationPlan:
    """Refuse explicit flips/rotations where orientation carries the label; turn default ones off with a note.

    ``class_names`` are the dataset's classes (display names from ``data.display_names`` are checked too).
    Returns ``(config, notes, active)``; ``config`` is ``cfg`` itself when nothing changed, else a changed copy.
    """
    names = [str(c) for c in class_names] + list((cfg.data.display_names or {}).values())
    sensitive, reason = orientation_sensitive(names, cfg.data.orientation_matters)
    if not sensitive:
        return AugmentationPlan(cfg, [], active_augmentations(cfg))
    keys = _flip_keys(cfg)
    _check_overrides(cfg, {k for k, _, _ in keys}, reason)
    for key, model, f in keys:
        if getattr(model, f) and f in model.model_fields_set:
            raise _refuse(key, "", reason)
    default_on = [(key, f) for key, model, f in keys if getattr(model, f)]
    if not default_on:
        return AugmentationPlan(cfg, [], active_augmentations(cfg))
    new = cfg.model_copy(deep=True)
    for key, model, f in _flip_keys(new):
        if any(key == k for k, _ in default_on):
            setattr(model, f, False)
    notes = [f"{key} turned off (it was on by default): {WHY[f]}, and {reason}" for key, f in default_on]
    return AugmentationPlan(new, notes, active_augmentations(new))


__all__ = ["AugmentationPlan", "active_augmentations", "orientation_sensitive", "safe_augmentations", "side_word"]
