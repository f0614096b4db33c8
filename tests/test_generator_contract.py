"""Conformance: every registered generator kind goes through the protocol (``generators/base.py``) on phantom data.

fit -> save (the folder holds what ``generators/contract.py`` says) -> load -> sample the same images twice from the
same seeds -> resume after an interruption (``fit(stop_after=2)`` raises, a second ``fit`` resumes from the step-2
checkpoint and ends with the weights of an uninterrupted fit). Tiny sizes: a few seconds per kind.
"""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from test_sd_fixtures import tiny_sd  # noqa: F401  (session fixture: a tiny random Stable Diffusion)

from synthmed.config import load_config
from synthmed.generators import contract, registry
from synthmed.generators.base import Generator, SampleOptions
from synthmed.generators.checkpoints import SimulatedInterrupt

DATA = ["data.source=phantom:blood", "data.phantom.n_classes=2", "data.phantom.n_per_class=10",
        "data.phantom.size=28", "data.size=28", "device=cpu", "offline=true"]
TINY = {
    "ddpm": ["generator.ddpm.preset=custom", "generator.ddpm.block_out_channels=[8, 16]",
             "generator.ddpm.layers_per_block=1", "generator.ddpm.steps=4", "generator.ddpm.batch_size=4",
             "generator.ddpm.checkpoint_every=2", "generator.ddpm.num_train_timesteps=50",
             "generator.ddpm.mixed_precision=no", "generator.ddpm.warmup_steps=1"],
    "stable_diffusion": ["generator.stable_diffusion.recipe=datadream_joint", "generator.stable_diffusion.resolution=64",
                         "generator.stable_diffusion.rank=2", "generator.stable_diffusion.alpha=2",
                         "generator.stable_diffusion.text_encoder_targets=[]", "generator.stable_diffusion.shots=3",
                         "generator.stable_diffusion.max_steps=4", "generator.stable_diffusion.checkpoint_every=2",
                         "generator.stable_diffusion.batch_size=2", "generator.stable_diffusion.warmup_steps=0"],
}
#: kinds whose CPU resume is bit-identical; the others are compared at float tolerance (as tests/test_sd.py does)
EXACT = {"ddpm", "edm"}


def _edm_overrides() -> list[str]:
    from synthmed.generators.edm.config import EDMConfig

    wanted = {"preset": "XS", "steps": 4, "batch_size": 4, "checkpoint_every": 2, "mixed_precision": "no",
              "warmup_steps": 1}
    return [f"generator.edm.{k}={v}" for k, v in wanted.items() if k in EDMConfig.model_fields]


def _config(kind: str, request: pytest.FixtureRequest):
    if kind == "edm":
        module, attr = registry.REGISTRY["edm"].split(":")
        try:
            getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            pytest.skip("edm not importable")
        extra = _edm_overrides()
    elif kind == "stable_diffusion":
        extra = TINY[kind] + [f"generator.stable_diffusion.base={request.getfixturevalue('tiny_sd')}"]
    elif kind in TINY:
        extra = TINY[kind]
    else:
        pytest.skip(f"no tiny config for generator kind '{kind}' in this test yet")
    return load_config(None, DATA + [f"generator.kind={kind}", "generation.batch_size=4"] + extra)


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(f).items()})
    return out


@pytest.mark.parametrize("kind", registry.kinds())
def test_generator_protocol(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from synthmed.data.load import load_data

    cfg = _config(kind, request)
    data = load_data(cfg.data, tmp_path / "run", echo_warnings=False)
    cls = registry.generator_class(kind)
    assert cls.kind == kind

    gen = cls.from_config(cfg, data)
    assert isinstance(gen, Generator) and list(gen.classes) == list(data.classes)
    fp = gen.fingerprint()
    gen.fit(data.train, tmp_path / "work-a", progress=False)
    gen.save(tmp_path / "gen-a")

    # the folder contract
    folder = tmp_path / "gen-a"
    meta = json.loads((folder / contract.METADATA).read_text())
    assert meta["kind"] == kind and meta["classes"] == list(data.classes)
    assert contract.stored_fingerprint(folder) == fp and contract.stored_kind(folder) == kind
    assert json.loads((folder / contract.CONFIG).read_text())["kind"] == kind
    with open(folder / contract.TRAINING_IMAGES, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == contract.TRAINING_COLUMNS
    assert {r["id"] for r in rows} <= set(data.train.ids)
    weights = _weights(folder)
    assert weights and not [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]

    # load, then the same images twice from the same seeds; the seed matters
    loaded = cls.load(folder, cfg)
    assert list(loaded.classes) == list(data.classes) and loaded.fingerprint() == fp
    labels, seeds = [0, 1, 1, 0], [5, 6, 7, 8]
    opts = SampleOptions(steps=2, batch_size=4)
    a = loaded.sample(labels, seeds, opts)
    assert a.dtype == np.uint8 and a.shape == (4, *data.size, data.channels)
    np.testing.assert_array_equal(a, cls.load(folder, cfg).sample(labels, seeds, opts))
    np.testing.assert_array_equal(a, loaded.sample(labels, seeds, opts))
    assert not np.array_equal(a[1], loaded.sample([1], [99], opts)[0])

    # resume after an interruption equals the uninterrupted fit
    with pytest.raises(SimulatedInterrupt):
        cls.from_config(cfg, data).fit(data.train, tmp_path / "work-b", progress=False, stop_after=2)
    resumed = cls.from_config(cfg, data)
    resumed.fit(data.train, tmp_path / "work-b", progress=False)
    resumed.save(tmp_path / "gen-b")
    again = _weights(tmp_path / "gen-b")
    assert again.keys() == weights.keys()
    for k in weights:
        if kind in EXACT:
            np.testing.assert_array_equal(again[k], weights[k], err_msg=k)
        else:
            np.testing.assert_allclose(again[k], weights[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kind", ["ddpm", "edm", "stable_diffusion"])
def test_generator_training_reaches_the_tracker(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """tracking=tensorboard: every kind logs its training loss under RUN_DIR/tracking/generator."""
    pytest.importorskip("tensorboard", reason="tensorboard is a dev dependency")
    from synthmed.config import with_overrides
    from synthmed.data.load import load_data

    cfg = with_overrides(_config(kind, request), {"tracking": "tensorboard"})
    data = load_data(cfg.data, echo_warnings=False)
    registry.generator_class(kind).from_config(cfg, data).fit(data.train, tmp_path / "generator_work", progress=False)
    assert list((tmp_path / "tracking" / "generator").glob("events.out.tfevents.*")), kind
