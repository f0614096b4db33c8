"""Class display names for prompts and the report: "an immature granulocyte", not "a ig".

``display_name(class_name, cfg)`` looks up, in order: ``data.display_names`` (the config's map, exact class name),
the small built-in map of known abbreviations (``BUILTIN_NAMES``, case-insensitive), else the class name with
underscores as spaces. ``with_article(name)`` puts "a" or "an" in front by sound, not by spelling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Known abbreviations and plural catalogue names of the datasets synthmed targets (keys lowercase).
BUILTIN_NAMES: dict[str, str] = {
    # BloodMNIST / PBC (Acevedo et al.): the PBC folder is "ig", MedMNIST's cleaned label is plural
    "ig": "immature granulocyte",
    "immature granulocytes": "immature granulocyte",
    # OCT2017 (Kermany et al.)
    "cnv": "choroidal neovascularization",
    "dme": "diabetic macular edema",
    # DermaMNIST (HAM10000 codes)
    "akiec": "actinic keratosis",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}

# Letters whose spoken name starts with a vowel sound ("an MRI", "an SVM", "an X-ray"; "a CT", "a DME").
_VOWEL_SOUND_LETTERS = set("AEFHILMNORSX")
# Words spelled with a vowel that start with a "y"/"w" sound, and words with a silent h.
_A_PREFIXES = ("uni", "use", "usu", "ute", "uti", "uro", "ure", "uri", "uva", "uvu", "eu", "ewe", "one", "once")
_A_EXCEPT = ("unin", "unim", "unid", "unil", "unint")  # "an uninfected", "an unidentified"
_AN_PREFIXES = ("hour", "honest", "honor", "honour", "heir")


def _mapping(cfg: Any) -> Mapping[str, str]:
    """The ``display_names`` map of a ``Config``, a ``DataConfig`` or a plain mapping (None -> empty)."""
    if cfg is None:
        return {}
    if isinstance(cfg, Mapping):
        return cfg
    data = getattr(cfg, "data", cfg)
    return getattr(data, "display_names", None) or {}


def display_name(class_name: str, cfg: Any = None) -> str:
    """The name to show for ``class_name``: config map, then built-in map, then the name with '_' as spaces."""
    names = _mapping(cfg)
    if class_name in names:
        return str(names[class_name])
    key = " ".join(class_name.replace("_", " ").split())
    return BUILTIN_NAMES.get(key.lower(), key)


def article(name: str) -> str:
    """'a' or 'an' for ``name``, by its first sound."""
    word = name.strip().split(" ")[0] if name.strip() else ""
    if not word:
        return "a"
    lead = re.sub(r"^[^A-Za-z0-9]+", "", word)
    if not lead:
        return "a"
    if lead[0].isdigit():
        digits = re.match(r"\d+", lead).group(0)  # type: ignore[union-attr]
        # spoken "eight", "eleven", "eighteen", "eighty ...", "eight hundred ..."
        starts_an = digits[0] == "8" or (digits[:2] in ("11", "18") and len(digits) in (2, 5, 6))
        return "an" if starts_an else "a"
    head = re.match(r"[A-Za-z]+", lead).group(0)  # type: ignore[union-attr]
    if len(head) >= 2 and head.isupper() or len(head) == 1:
        # an acronym read letter by letter ("a CNV", "an MRI", "an HE stain")
        return "an" if head[0].upper() in _VOWEL_SOUND_LETTERS else "a"
    low = head.lower()
    if low.startswith(_AN_PREFIXES):
        return "an"
    if low.startswith(_A_PREFIXES) and not low.startswith(_A_EXCEPT):
        return "a"
    return "an" if low[0] in "aeiou" else "a"


def with_article(name: str) -> str:
    """``"an eosinophil"``, ``"a lymphocyte"``, ``"an immature granulocyte"``, ``"a unicorn"``, ``"a CNV"``."""
    return f"{article(name)} {name.strip()}"


__all__ = ["BUILTIN_NAMES", "display_name", "article", "with_article"]
