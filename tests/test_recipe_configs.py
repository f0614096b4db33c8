"""The recipe configs match docs/recipes.md, keep their invariants, and their smoke variants run end to end.

Every code span ``key = value`` in the "our config value" column of docs/recipes.md is checked against the config
named above the table, resolved through ``synthmed.load_config`` and the Stable Diffusion recipe (so defaults
count): a change on one side only fails here. No model is built except in the (slow-marked) smoke run.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_sd_fixtures import tiny_sd  # noqa: F401

from synthmed.config import load_config
from synthmed.generators.stable_diffusion.recipes import resolve

REPO = Path(__file__).resolve().parents[1]
INCEPTION = REPO.parent / "shared" / "weights" / "fid-inception-v3-tf.torchscript.pt"
DOC = REPO / "docs" / "recipes.md"
RECIPES = ["configs/cytodiff.yaml", "configs/oct-ratio.yaml"]
SMOKE = {"configs/cytodiff.yaml": "configs/smoke-cytodiff.yaml",
         "configs/oct-ratio.yaml": "configs/smoke-oct-ratio.yaml"}
CLAIM = re.compile(r"`([A-Za-z0-9_.\-]+) = ([^`]*)`")
#: settings issue 15 names for each recipe: the table must keep a row checking them
REQUIRED = {
    "configs/cytodiff.yaml": [
        "generator.stable_diffusion.base", "recipe.per_class", "recipe.rank", "recipe.alpha", "recipe.unet_targets",
        "recipe.text_encoder_targets", "recipe.shots", "recipe.epochs", "recipe.batch_size", "recipe.lr",
        "recipe.lr_scheduler", "recipe.warmup_steps", "recipe.weight_decay", "recipe.resolution",
        "generation.guidance", "generation.steps", "generation.n_per_class", "derived.long_tail_min_per_class",
        "classifier.model", "data.size", "classifier.clip.arch", "classifier.clip.lora_r", "classifier.clip.lora_alpha",
        "classifier.clip.lora_dropout", "classifier.clip.lora_towers", "classifier.init", "classifier.min_lr",
        "classifier.mix_prob", "generation.sampler",
    ],
    "configs/oct-ratio.yaml": [
        "generator.stable_diffusion.base", "generator.stable_diffusion.recipe", "recipe.lora",
        "recipe.train_text_encoder", "recipe.lr", "recipe.batch_size", "recipe.resolution",
        "generator.stable_diffusion.prompts.CNV", "classifier.model", "sweep.grid.mix.ratio", "mix.ratio_mode",
        "mix.ratio_classes", "derived.max_ratio_synthetic_per_class", "quality.backbone", "generation.sampler",
    ],
}


def tables() -> dict[str, list[list[str]]]:
    """Config path -> the rows (cells) of the table that follows its ``Config: `path``` line."""
    out: dict[str, list[list[str]]] = {}
    current: str | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"Config: `([^`]+)`", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif current is not None and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] not in ("setting", "---") and not set(cells[0]) <= {"-"}:
                out[current].append(cells)
        elif current is not None and out[current] and not line.startswith("|"):
            current = None
    return out


def claims(path: str) -> list[tuple[str, str, str]]:
    """(setting, key, value text) of every checked code span of the config's table."""
    return [(row[0], k, v) for row in tables()[path] for k, v in CLAIM.findall(row[2])]


def parse(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 as a string
        except ValueError:
            return value
    return value


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def _walk(obj: Any, parts: list[str]) -> Any:
    while parts:
        if isinstance(obj, dict):  # keys may be dotted (run.policies.<name>.mix.policy, sweep.grid.mix.ratio)
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in obj:
                    obj, parts = obj[".".join(parts[:n])], parts[n:]
                    break
            else:
                raise KeyError(".".join(parts))
        else:
            if not hasattr(obj, parts[0]):
                raise KeyError(".".join(parts))
            obj, parts = getattr(obj, parts[0]), parts[1:]
    return obj


def grid_ratios(cfg: Any) -> list[float]:
    return [float(r) for r in cfg.sweep.grid.get("mix.ratio", [cfg.mix.ratio])]


def synthetic_needed(cfg: Any) -> int:
    """The most synthetic images per class any R of the grid asks for (``data.shots`` real images per class; the
    classes R applies to are ``mix.ratio_classes``, else all)."""
    from synthmed.classifiers.mixing import largest_remainder
    import numpy as np

    shots = cfg.data.shots
    assert shots is not None, "the ratio check needs data.shots (equal real classes)"
    names = list(cfg.generator.stable_diffusion.prompts) or [str(i) for i in range(cfg.data.phantom.n_classes)]
    named = [n for n in names if cfg.mix.ratio_classes is None or n in cfg.mix.ratio_classes]
    assert named, f"mix.ratio_classes {cfg.mix.ratio_classes} names none of the classes {names}"
    counts = np.full(len(named), shots)
    need = 0
    for r in grid_ratios(cfg):
        if cfg.mix.ratio_mode == "replace":  # floor(R n + 1/2) of a class's n real images are replaced
            need = max(need, int(math.floor(r * shots + 0.5)))
            continue
        total = int(counts.sum()) if r >= 1.0 else int(round(r / (1.0 - r) * counts.sum()))
        need = max(need, int(np.max(largest_remainder(total, counts))))
    return need


def derived(cfg: Any, name: str) -> Any:
    from synthmed.data.splits import long_tail_counts

    st = resolve(cfg.generator.stable_diffusion)
    if name == "long_tail_min_per_class":
        lt = cfg.data.long_tail
        n = len(lt.order) if lt.order else cfg.data.phantom.n_classes
        return min(long_tail_counts(n, lt.ratio, lt.max_per_class))
    if name == "lora_steps_per_class":
        return st.steps_for(st.shots or 1)
    if name == "max_ratio_synthetic_per_class":
        return synthetic_needed(cfg)
    raise KeyError(f"derived.{name}")


def value_of(cfg: Any, key: str) -> Any:
    head, _, rest = key.partition(".")
    if head == "recipe":
        return _walk(resolve(cfg.generator.stable_diffusion), rest.split("."))
    if head == "derived":
        return derived(cfg, rest)
    return _walk(cfg, key.split("."))


def mismatches(path: str, overrides: list[str] | None = None) -> list[str]:
    cfg = load_config(REPO / path, overrides or [])
    bad = []
    for setting, key, text in claims(path):
        try:
            got = value_of(cfg, key)
        except KeyError as err:
            bad.append(f"{setting}: {key} is not a setting ({err})")
            continue
        if not same(got, parse(text)):
            bad.append(f"{setting}: docs say {key} = {text}, {path} gives {got!r}")
    return bad


@pytest.mark.parametrize("path", RECIPES)
def test_config_matches_the_recipe_table(path: str) -> None:
    assert claims(path), f"docs/recipes.md has no checked table for {path}"
    assert mismatches(path) == []


@pytest.mark.parametrize("path", RECIPES)
def test_table_keeps_the_recipe_settings(path: str) -> None:
    keys = {k for _, k, _ in claims(path)}
    assert [k for k in REQUIRED[path] if k not in keys] == []
    rows = tables()[path]
    assert all(len(r) == 4 for r in rows), "every row has setting | published | ours | why"


def test_a_drift_fails() -> None:
    bad = mismatches("configs/cytodiff.yaml", ["generator.stable_diffusion.rank=8", "classifier.clip.lora_dropout=0"])
    assert len(bad) == 2 and any("recipe.rank = 16" in b for b in bad)
    bad = mismatches("configs/oct-ratio.yaml", ["data.shots=300"])  # R = 1 would need 300 CNV
    assert any("max_ratio_synthetic_per_class" in b for b in bad)


@pytest.mark.parametrize("path", ["configs/cytodiff.yaml", "configs/smoke-cytodiff.yaml"])
def test_long_tail_leaves_every_class_the_generators_shots(path: str) -> None:
    cfg = load_config(REPO / path, [])
    assert derived(cfg, "long_tail_min_per_class") >= resolve(cfg.generator.stable_diffusion).shots


@pytest.mark.parametrize("path", ["configs/oct-ratio.yaml", "configs/smoke-oct-ratio.yaml"])
def test_every_ratio_is_runnable(path: str) -> None:
    cfg = load_config(REPO / path, [])
    assert 1.0 in grid_ratios(cfg) and 0.0 in grid_ratios(cfg)
    if cfg.filter.enabled:  # kept images may fall short: the config must say how R stays exact
        assert cfg.mix.shortage == "take_all"
    else:
        assert cfg.generation.n_per_class >= synthetic_needed(cfg)
    assert cfg.mix.shortage == "take_all"


MIRRORED = ["generator.stable_diffusion.recipe", "generation.sampler", "generation.guidance", "filter.enabled",
            "classifier.model", "classifier.optimizer", "mix.policy", "mix.shortage", "mix.weight_lambda",
            "classifier.clip.head", "classifier.clip.lora_towers", "classifier.clip.lora_dropout",
            "classifier.clip.lora_r", "classifier.clip.lora_alpha", "classifier.augment", "data.channels",
            "classifier.init", "classifier.min_lr", "classifier.mix_prob", "classifier.mixup", "classifier.cutmix",
            "mix.ratio_mode"]


@pytest.mark.parametrize("path", RECIPES)
def test_smoke_variant_keeps_the_recipe(path: str) -> None:
    real, smoke = load_config(REPO / path, []), load_config(REPO / SMOKE[path], [])
    assert smoke.is_offline
    assert [k for k in MIRRORED if value_of(real, k) != value_of(smoke, k)] == []
    def kinds(cfg: Any) -> set[tuple[Any, Any]]:
        return {(p.get("mix.policy"), p.get("classifier.model")) for p in cfg.run.policies.values()}

    assert kinds(smoke) <= kinds(real)  # the same policies (mixing x classifier), fewer or smaller


@pytest.mark.slow
def test_smoke_oct_ratio_end_to_end(tiny_sd, tmp_path) -> None:  # noqa: F811
    """finetune (full UNet) -> generate -> quality -> one classifier per R (0, 0.5, 1) on the tiny random SD; the FID
    is Inception's, as in the real recipe, where ../shared holds the Inception weights (else classifier features).
    R replaces real images of the class standing in for CNV (basophil, class 0) only."""
    from synthmed.cli import main

    run = tmp_path / "run"
    backbone = (["--set", "quality.backbone=inception", "--set", f"quality.inception_path={INCEPTION}"]
                if INCEPTION.is_file() else [])
    assert main(["sweep", str(REPO / "configs/smoke-oct-ratio.yaml"), "-o", str(run),
                 "--set", f"generator.stable_diffusion.base={tiny_sd}", *backbone]) == 0
    meta = json.loads((run / "generator" / "synthmed.json").read_text())
    assert meta["recipe"] == "full_unet" and meta["settings"]["lora"] is False
    assert (run / "generator" / "unet").is_dir() and not (run / "generator" / "lora").exists()
    with open(run / "synthetic" / "manifest.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert len(manifest) == 2 * 10 and all(r["kept"] == "true" for r in manifest)
    assert {r["prompt"] for r in manifest} == {"OCT scan showing CNV", "OCT scan showing a normal retina"}
    fidelity = json.loads((run / "quality" / "quality.json").read_text())["fidelity"]
    assert fidelity["backbone"] == ("inception" if backbone else "classifier")
    fid = fidelity["synthetic_all"]["overall"]
    assert fid["n_real"] == 16 and fid["n_fake"] == 20 and math.isfinite(fid["fid"])
    with open(run / "results.csv", newline="") as fh:
        rows = {float(r["mix.ratio"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == [0.0, 0.5, 1.0]
    per_class = {r: (json.loads(row["train_real_per_class"]), json.loads(row["train_synthetic_per_class"]))
                 for r, row in rows.items()}
    assert per_class == {0.0: ([8, 8], [0, 0]), 0.5: ([4, 8], [4, 0]), 1.0: ([0, 8], [8, 0])}
    assert [rows[r]["kind"] for r in (0.0, 0.5, 1.0)] == ["real_only", "synthetic", "synthetic"]
    assert all(0.0 <= float(row["balanced_accuracy"]) <= 1.0 for row in rows.values())
    assert (run / "report.html").is_file()
