"""The EDM generator kind: preconditioning and loss match the paper, samplers, SDEdit, save/load, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthmed.config import load_config
from synthmed.data.load import load_data
from synthmed.errors import ConfigError
from synthmed.generators.base import SampleOptions
from synthmed.generators.checkpoints import SimulatedInterrupt
from synthmed.generators.edm import precond
from synthmed.generators.registry import generator_class

TINY = ["data.source=phantom:blood", "data.size=32", "data.phantom.n_classes=3", "data.phantom.n_per_class=12",
        "data.phantom.size=32", "generator.kind=edm", "generator.edm.preset=XS", "generator.edm.steps=4",
        "generator.edm.batch_size=4", "generator.edm.checkpoint_every=2", "generator.edm.warmup_steps=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    cfg = load_config(None, TINY)
    data = load_data(cfg.data)
    root = tmp_path_factory.mktemp("edm")
    gen = generator_class("edm").from_config(cfg, data).fit(data.train, root / "work", progress=False)
    gen.save(root / "generator")
    return cfg, data, gen, root


def test_loss_is_the_edm_weighted_denoising_error() -> None:
    """MSE(F, (x0 - c_skip x) / c_out) == mean(lambda(sigma) * (D(x) - x0)^2) with EDM's lambda."""
    sched = precond.euler_scheduler(precond.scheduler_config(0.5, 0.002, 80.0, 7.0))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    noise, z = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, generator=g)
    weight = torch.randn(1, generator=g)

    def net(x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return weight * x + c_noise[:, None, None, None]

    loss = precond.training_loss(net, sched, x0, torch.zeros(3, dtype=torch.long), noise, z, -1.2, 1.2)
    sigma = torch.exp(-1.2 + 1.2 * z)[:, None, None, None]
    x = x0 + sigma * noise
    d = sched.precondition_outputs(x, net(sched.precondition_inputs(x, sigma), 0.25 * sigma.log().flatten(), None),
                                   sigma)
    lam = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(loss, (lam * (d - x0) ** 2).mean(), rtol=1e-4)


def test_sdedit_start_index_and_unknown_sampler() -> None:
    assert precond.start_index(20, None) == 0 and precond.start_index(20, 1.0) == 0
    assert precond.start_index(20, 0.5) == 10 and precond.start_index(20, 0.01) == 19
    assert precond.resolve_sampler("ddim") == "euler"
    for name in ("plms", "dpmpp_sde"):  # dpmpp_sde is a ddpm / stable_diffusion sampler only
        with pytest.raises(ConfigError, match="not an EDM sampler"):
            precond.resolve_sampler(name)


@pytest.mark.parametrize("sampler", ["dpmpp", "euler", "heun"])
def test_same_seeds_same_images_after_reload(tiny, sampler: str) -> None:
    cfg, data, gen, root = tiny
    again = generator_class("edm").load(root / "generator", cfg)
    opts = SampleOptions(sampler=sampler, steps=3, batch_size=3)
    a = gen.sample([0, 1, 2], [11, 12, 13], opts)
    b = again.sample([0, 1, 2], [11, 12, 13], opts)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], gen.sample([0], [14], opts)[0]), "another seed, another image"
    assert again.provenance(opts)["generator"] == "edm" and again.provenance(opts)["model_sha256"]


def test_sdedit_stays_close_to_its_source(tiny) -> None:
    """Low strength keeps the source's content; strength 1 ignores it."""
    _, data, gen, _ = tiny
    src = data.train.images[:3]
    labels = data.train.labels[:3].tolist()
    near = gen.sample(labels, [1, 2, 3], SampleOptions(steps=10, sources=src, strength=0.2))
    far = gen.sample(labels, [1, 2, 3], SampleOptions(steps=10, sources=src, strength=1.0))
    gap = lambda a: np.abs(a.astype(int) - src.astype(int)).mean()  # noqa: E731
    assert gap(near) < gap(far)


def test_interrupted_fit_resumes_bit_identical(tiny, tmp_path: Path) -> None:
    cfg, data, gen, _ = tiny
    cls = generator_class("edm")
    with pytest.raises(SimulatedInterrupt):
        cls.from_config(cfg, data).fit(data.train, tmp_path, progress=False, stop_after=2)
    resumed = cls.from_config(cfg, data).fit(data.train, tmp_path, progress=False)
    assert resumed.last_fit.resumed_from == 2
    want, got = gen.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_folder_follows_the_contract(tiny) -> None:
    from synthmed.generators import contract

    _, data, _, root = tiny
    meta = contract.read_metadata(root / "generator", "edm")
    assert meta["training"]["formulation"] == "edm" and meta["classes"] == list(data.classes)
    rows = contract.read_training_images(root / "generator")
    assert len(rows) == len(data.train)
    assert (root / "generator" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_tracking_logs_the_generator_loss(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency")
    cfg = load_config(None, [*TINY, "generator.edm.steps=2", "tracking=tensorboard"])
    data = load_data(cfg.data)
    generator_class("edm").from_config(cfg, data).fit(data.train, tmp_path / "generator_work", progress=False)
    events = list((tmp_path / "tracking" / "generator").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_training_log_holds_the_loss_curve(tiny) -> None:
    import csv

    _, _, _, root = tiny
    with open(root / "generator" / "training_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(float(r["loss"]) > 0 for r in rows)
