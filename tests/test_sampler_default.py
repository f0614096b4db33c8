"""``generation.sampler: default`` keeps the base model's own scheduler (Stable Diffusion: the pipeline's as loaded;
ddpm / edm: their saved training scheduler)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from synthmed.config import load_config
from synthmed.errors import UserError
from synthmed.generators.base import SampleOptions
from synthmed.generators.ddpm.generator import DDPMGenerator
from synthmed.generators.edm.generator import EDMGenerator
from synthmed.generators.stable_diffusion.sampling import set_sampler


def test_stable_diffusion_default_keeps_the_loaded_scheduler() -> None:
    from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

    loaded = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = SimpleNamespace(scheduler=loaded)
    set_sampler(pipe, "default")
    assert pipe.scheduler is loaded  # untouched
    set_sampler(pipe, "dpmpp")
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++" and pipe.scheduler.config.beta_end == 0.012
    set_sampler(pipe, "dpmpp_sde")  # the stochastic variant (draws from the pipeline's per-image generators)
    assert pipe.scheduler.config.algorithm_type == "sde-dpmsolver++" and pipe.scheduler.config.beta_end == 0.012
    set_sampler(pipe, "default")  # back to the base's own scheduler, not the last one
    assert pipe.scheduler is loaded
    with pytest.raises(UserError, match="not a Stable Diffusion sampler"):
        set_sampler(pipe, "heun")


def test_ddpm_and_edm_default_is_their_saved_scheduler() -> None:
    opts = SampleOptions(sampler="default", guidance=1.0)
    # options() reads no instance state: the saved scheduler of ddpm is a DDPMScheduler, of edm an EDMEulerScheduler
    assert DDPMGenerator.options(None, opts) == ("ddpm", 1000, 1.0)  # type: ignore[arg-type]
    assert EDMGenerator.options(None, opts) == ("euler", 40, 1.0)  # type: ignore[arg-type]


def test_config_accepts_default() -> None:
    cfg = load_config(None, ["generation.sampler=default"])
    assert cfg.generation.sampler == "default"
