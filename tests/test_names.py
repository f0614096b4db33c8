"""Class display names and their articles (data/names.py)."""

from __future__ import annotations

import pytest

from synthmed.config import load_config
from synthmed.data.config import DataConfig
from synthmed.data.names import display_name, with_article


@pytest.mark.parametrize("name, expected", [
    ("eosinophil", "an eosinophil"), ("lymphocyte", "a lymphocyte"),
    ("immature granulocyte", "an immature granulocyte"), ("unicorn", "a unicorn"), ("umbrella", "an umbrella"),
    ("uninfected cell", "an uninfected cell"), ("hour", "an hour"), ("hyphae", "a hyphae"),
    ("CNV", "a CNV"), ("MRI scan", "an MRI scan"), ("DME", "a DME"), ("X-ray", "an X-ray"),
    ("8-bit image", "an 8-bit image"), ("11 cells", "an 11 cells"), ("3 cells", "a 3 cells"),
    ("urothelial carcinoma", "a urothelial carcinoma"), ("ulcer", "an ulcer"), ("one-sided", "a one-sided"),
    ("  monocyte ", "a monocyte"),
])  # fmt: skip
def test_with_article_by_sound(name: str, expected: str) -> None:
    assert with_article(name) == expected


def test_display_name_builtin_config_and_fallback() -> None:
    assert display_name("ig") == "immature granulocyte"
    assert display_name("IG") == "immature granulocyte"  # built-in lookup ignores case
    assert display_name("immature granulocytes") == "immature granulocyte"  # MedMNIST's cleaned plural label
    assert display_name("class_3") == "class 3"
    assert display_name("basophil") == "basophil"
    cfg = DataConfig(display_names={"ig": "myelocyte", "x": "xanthoma"})
    assert display_name("ig", cfg) == "myelocyte"  # the config wins over the built-in map
    assert display_name("neutrophil", cfg) == "neutrophil"
    full = load_config(None, ["data.display_names={ig: promyelocyte}"])
    assert display_name("ig", full) == "promyelocyte"  # a whole Config works too
    assert display_name("ig", {"ig": "granulocyte precursor"}) == "granulocyte precursor"
    assert with_article(display_name("ig")) == "an immature granulocyte"


def test_stable_diffusion_prompts_use_display_names_and_articles() -> None:
    from synthmed.config import load_config
    from synthmed.generators.stable_diffusion.recipes import resolve

    cfg = load_config(None, ["generator.stable_diffusion.recipe=cytodiff", "data.display_names={mono: monocyte}"])
    st = resolve(cfg.generator.stable_diffusion, ["ig", "eosinophil", "mono"])
    assert [st.prompt(c, cfg.data) for c in ("ig", "eosinophil", "mono")] == [
        "a microscopy image of an immature granulocyte", "a microscopy image of an eosinophil",
        "a microscopy image of a monocyte"]
