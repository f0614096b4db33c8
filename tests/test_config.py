"""Config loading, overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthmed.config import Config, load_config, with_overrides
from synthmed.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_yaml_roundtrip(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "seed: 3\ndata:\n  source: phantom:blood\n  size: 32\n"))
    assert cfg.seed == 3 and cfg.data.size == 32
    again = load_config(write(tmp_path, cfg.to_yaml()))
    assert again == cfg


def test_set_overrides_parse_yaml_values(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.size=48", "run.seeds=[0, 1, 2]", "data.shots=null", "mix.lambda=0.5"])
    assert cfg.data.size == 48 and cfg.run.seeds == [0, 1, 2] and cfg.data.shots is None
    assert cfg.mix.weight_lambda == 0.5


def test_unknown_key_names_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "data:\n  sorce: npz:x.npz\n"))
    assert "data.sorce" in str(err.value) and "data.source" in str(err.value)
    with pytest.raises(ConfigError, match="unknown config key 'clasifier'.*'classifier'"):
        load_config(None, ["clasifier.epochs=3"])


def test_wrong_type_and_range_are_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["mix.ratio=1.5"])
    assert "mix.ratio" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="data.size"):
        load_config(None, ["data.size=abc"])


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_with_overrides_copies() -> None:
    base = Config()
    new = with_overrides(base, {"mix.policy": "ratio", "mix.ratio": 0.3})
    assert base.mix.policy == "real_only" and new.mix.policy == "ratio" and new.mix.ratio == 0.3


def test_with_overrides_keeps_defaults_unset() -> None:
    """A preset's architecture must not change because a copy marked every default as explicitly set."""
    from synthmed.generators.ddpm.model import resolve_arch

    cfg = load_config(None, ["generator.ddpm.preset=XS"])
    copy = with_overrides(cfg, {"seed": 1})
    assert copy.generator.ddpm.model_fields_set == cfg.generator.ddpm.model_fields_set
    assert resolve_arch(copy.generator.ddpm)["layers_per_block"] == 1


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    """Each config in configs/ validates, and its sweep names policies it defines (``synthmed sweep`` refuses
    others: the long-tail config once named an undefined one)."""
    cfg = load_config(path)
    for name in cfg.sweep.policies or []:
        assert name in cfg.run.policies, f"{path.name}: sweep.policies names {name!r}, not in run.policies"
