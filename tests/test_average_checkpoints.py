"""``generator.<kind>.average_checkpoints``: final weights = the mean EMA of the last K checkpoints (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from synthmed.config import load_config
from synthmed.data.load import load_data
from synthmed.errors import UserError
from synthmed.generators import contract
from synthmed.generators.checkpoints import SimulatedInterrupt, list_checkpoints, load_tensors, mean_ema
from synthmed.generators.config import DDPMConfig
from synthmed.generators.ddpm.train import fingerprint, train_ddpm
from synthmed.generators.edm.config import EDMConfig
from synthmed.generators.stage import finetune

from test_ddpm import CLASSES, tiny_cfg, two_class_set


def ema_mean(folders: list[Path]) -> dict[str, torch.Tensor]:
    """An independent reference: ``torch.stack(...).mean(0)`` of the checkpoints' EMA weights."""
    loaded = [load_tensors(f / "ema.safetensors") for f in folders]
    return {k: torch.stack([d[k].float() for d in loaded]).mean(0) for k in loaded[0]}


def test_config_spells_one_as_none_and_refuses_more_than_the_schedule_writes() -> None:
    assert DDPMConfig(average_checkpoints=1).average_checkpoints is None
    assert EDMConfig(average_checkpoints=1).average_checkpoints is None
    DDPMConfig(steps=3430, checkpoint_every=343, average_checkpoints=10)  # 10 checkpoints written
    for cls in (DDPMConfig, EDMConfig):
        with pytest.raises(ValidationError, match="writes 10 checkpoint"):
            cls(steps=3430, checkpoint_every=343, average_checkpoints=11)
    with pytest.raises(ValidationError, match="writes 3 checkpoint"):  # every 2 steps and the end: 2, 4, 5
        DDPMConfig(steps=5, checkpoint_every=2, average_checkpoints=4)


def test_ddpm_final_weights_are_the_mean_ema_of_the_last_k_checkpoints(tmp_path: Path) -> None:
    """K = 3 over a 6-step run with a checkpoint every 2 steps: the weights are the mean of the EMA of steps 2, 4, 6
    (not the last EMA), the run keeps 3 checkpoints though keep_checkpoints is 1, the checkpoints are those of the
    same run without averaging (the trajectory and its fingerprint do not change), and a finished run resumed with
    the same setting gives the same weights bit for bit."""
    data = two_class_set(n_per_class=8, size=12)
    cfg = tiny_cfg(average_checkpoints=3, keep_checkpoints=1)
    res = train_ddpm(cfg, data, CLASSES, tmp_path / "avg", progress=False)
    found = list_checkpoints(tmp_path / "avg" / "checkpoints")
    assert [s for s, _ in found] == [2, 4, 6]
    assert res.generator.meta["training"]["averaged_steps"] == [2, 4, 6]
    assert res.generator.meta["training"]["average_checkpoints"] == 3
    want = ema_mean([p for _, p in found])
    got = dict(res.generator.unet.named_parameters())
    assert set(want) == set(got)
    assert all(torch.allclose(got[k].detach(), want[k], atol=1e-6, rtol=1e-5) for k in want)
    exact = mean_ema([p for _, p in found])  # what benchmarks/bench_quality_per_minute.py --average samples
    assert all(torch.equal(got[k].detach(), exact[k]) for k in exact)
    last = load_tensors(found[-1][1] / "ema.safetensors")
    assert any(not torch.allclose(got[k].detach(), last[k].float(), atol=1e-5) for k in last)

    plain = train_ddpm(tiny_cfg(keep_checkpoints=1), data, CLASSES, tmp_path / "plain", progress=False)
    assert "averaged_steps" not in plain.generator.meta["training"]
    assert plain.generator.meta["training"]["fingerprint"] == res.generator.meta["training"]["fingerprint"]
    assert fingerprint(cfg, 0, data, 1) == fingerprint(tiny_cfg(), 0, data, 1)
    plain_last = load_tensors(list_checkpoints(tmp_path / "plain" / "checkpoints")[-1][1] / "ema.safetensors")
    assert all(torch.equal(plain_last[k], last[k]) for k in last)  # the same trajectory
    assert all(torch.equal(v.detach(), last[k]) for k, v in plain.generator.unet.named_parameters())

    again = train_ddpm(cfg, data, CLASSES, tmp_path / "avg", progress=False)
    assert again.resumed_from == 6
    assert all(torch.equal(v, got[k]) for k, v in again.generator.unet.named_parameters())


def test_averaging_a_run_whose_checkpoints_were_pruned_names_the_setting(tmp_path: Path) -> None:
    """A finished run that kept one checkpoint cannot average two; a run stopped half-way that kept one is refused
    when it resumes (before training on, not at the end); a finished run whose checkpoints have another spacing
    than checkpoint_every says (the window would be other steps) is refused too."""
    data = two_class_set(n_per_class=8, size=12)
    train_ddpm(tiny_cfg(keep_checkpoints=1), data, CLASSES, tmp_path / "a", progress=False)
    with pytest.raises(UserError, match=r"generator\.ddpm\.average_checkpoints=2 averages the checkpoints of "
                                        r"steps \[4, 6\], but .* holds steps \[6\]"):
        train_ddpm(tiny_cfg(average_checkpoints=2), data, CLASSES, tmp_path / "a", progress=False)

    with pytest.raises(SimulatedInterrupt):
        train_ddpm(tiny_cfg(keep_checkpoints=1), data, CLASSES, tmp_path / "b", progress=False, stop_after=4)
    with pytest.raises(UserError, match=r"steps \[2, 4, 6\], but .* holds steps \[4\]"):
        train_ddpm(tiny_cfg(average_checkpoints=3), data, CLASSES, tmp_path / "b", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")] == [4]  # refused before training on

    train_ddpm(tiny_cfg(keep_checkpoints=3), data, CLASSES, tmp_path / "c", progress=False)  # steps 2, 4, 6
    with pytest.raises(UserError, match=r"steps \[3, 6\], but .* holds steps \[2, 4, 6\]"):
        train_ddpm(tiny_cfg(average_checkpoints=2, checkpoint_every=3), data, CLASSES, tmp_path / "c",
                   progress=False)


EDM = ["data.source=phantom:blood", "data.size=32", "data.phantom.n_classes=3", "data.phantom.n_per_class=8",
       "data.phantom.size=32", "generator.kind=edm", "generator.edm.preset=XS", "generator.edm.steps=4",
       "generator.edm.batch_size=4", "generator.edm.checkpoint_every=2", "generator.edm.warmup_steps=1"]


def test_setting_the_average_on_a_finished_run_refits_the_weights_without_retraining(tmp_path: Path) -> None:
    """Through the finetune stage (edm kind): the generator of a finished run is not rebuilt while the setting is
    unchanged; setting it changes the generator's fingerprint, so the stage makes new weights from the kept
    checkpoints (resumed at the last step, no training) and records which it averaged."""
    plain_cfg = load_config(None, EDM)
    data = load_data(plain_cfg.data)
    run = tmp_path / "run"
    folder = finetune(plain_cfg, run, data, progress=False)
    meta = json.loads((folder / contract.METADATA).read_text())
    assert "averaged_steps" not in meta["training"]
    sha = meta["model_sha256"]
    assert finetune(plain_cfg, run, data, progress=False) == folder  # unchanged: kept
    assert json.loads((folder / contract.METADATA).read_text())["model_sha256"] == sha

    avg_cfg = load_config(None, EDM + ["generator.edm.average_checkpoints=2"])
    finetune(avg_cfg, run, data, progress=False)
    meta2 = json.loads((folder / contract.METADATA).read_text())
    assert meta2["training"]["averaged_steps"] == [2, 4] and meta2["training"]["resumed_from"] == 4
    assert meta2["training"]["fingerprint"] == meta["training"]["fingerprint"]  # the same checkpoints
    assert meta2["fingerprint"] != meta["fingerprint"] and meta2["model_sha256"] != sha
