"""The typed configuration (a leaf: it imports only the section models below it): YAML + ``--set a.b=c`` overrides, validated by pydantic.

Each section's model lives next to the code it configures (``data/config.py``, ``generators/config.py`` ...)
so that a stage and its settings change together; this module assembles them, loads YAML, applies overrides
and turns validation errors into one-line messages that name the key (and the closest valid key).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Literal, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synthmed.classifiers.config import ClassifierConfig, ImbalanceConfig, MixConfig
from synthmed.data.config import DataConfig
from synthmed.errors import ConfigError
from synthmed.generators.config import GenerationConfig, GeneratorConfig
from synthmed.io import atomic_write_text
from synthmed.metrics.config import QualityConfig
from synthmed.synthetic.config import FilterConfig


class RunConfig(BaseModel):
    """What ``synthmed run`` trains: every named policy for every seed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seeds: list[int] = Field(default_factory=lambda: [0])
    policies: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"real_only": {"mix.policy": "real_only"}},
        description="policy name -> dotted overrides of mix/imbalance/classifier (e.g. {'mix.policy': 'ratio'})",
    )
    keep_stale: bool = Field(
        False, description="keep outputs invalidated by a changed setting under RUN_DIR/.stale/ instead of deleting them"
    )


class SlurmConfig(BaseModel):
    """``synthmed sweep --launcher slurm``: the resources of each job of the array (submitted through submitit)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cluster: Literal["slurm", "local"] = Field(
        "slurm", description="slurm | local (the same jobs as local processes through submitit: to try a setup)")
    partition: str | None = Field(None, description="SLURM partition (None = the cluster's default)")
    time_min: int = Field(60, ge=1, description="time limit of one array task, in minutes")
    upstream_time_min: int | None = Field(
        None, ge=1, description="time limit of the job running the shared stages (finetune...); None = time_min")
    gpus_per_job: int = Field(0, ge=0, description="GPUs per job (0 = none requested)")
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs per task (None = the cluster's default)")
    mem_gb: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="memory per job in GB (None = the cluster's default)")
    array_parallelism: int | None = Field(
        None, ge=1, description="at most this many array tasks at once (None = submitit's default, 256)")
    shards: int | None = Field(
        None, ge=1, description="array tasks over the grid (None = one per classifier); each trains every N-th one")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = Field(
        default_factory=list, description="shell lines run before each job (module load ..., source .venv/bin/activate)")
    additional: dict[str, Any] = Field(
        default_factory=dict, description="more sbatch options, e.g. {exclude: node12} -> #SBATCH --exclude=node12")
    poll_s: float = Field(30.0, gt=0, le=3600, description="seconds between job-state checks while waiting")


class SweepConfig(BaseModel):
    """A grid over any config keys; the generator and synthetic set are shared by all grid points."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values")
    policies: list[str] | None = Field(
        None, description="names from run.policies trained at every grid point (None = all of run.policies)"
    )
    launcher: Literal["local", "slurm"] = Field(
        "local", description="local (this machine) | slurm (the shards as a SLURM job array, see sweep.slurm)")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class Config(BaseModel):
    """The whole configuration of a synthmed run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = Field(0, description="global seed (classifier training, subsets, generation)")
    offline: bool = Field(False, description="never touch the network (also set by HF_HUB_OFFLINE=1)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    tracking: Literal["none", "tensorboard", "wandb", "mlflow"] = Field(
        "none", description="experiment tracking of generator and classifier training (RUN_DIR/tracking/)")
    data: DataConfig = Field(default_factory=DataConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    imbalance: ImbalanceConfig = Field(default_factory=ImbalanceConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @property
    def is_offline(self) -> bool:
        return self.offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(path, self.to_yaml())


# ---------------------------------------------------------------------------------------------- overrides


def parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (``3`` -> int, ``[0, 1]`` -> list, ``null`` -> None)."""
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise ConfigError(f"override value nested too deeply: {text[:40]}...") from None
    _refuse_bytes(value, "override value")
    return value


def _refuse_bytes(value: Any, where: str, depth: int = 0) -> None:
    """YAML's ``!!binary`` makes bytes, which no setting takes and the saved config cannot hold."""
    if isinstance(value, (bytes, bytearray)):
        raise ConfigError(f"{where}: binary (!!binary) values are not allowed")
    if depth < 50 and isinstance(value, dict):
        for k, v in value.items():
            _refuse_bytes(k, where, depth + 1)
            _refuse_bytes(v, where, depth + 1)
    elif depth < 50 and isinstance(value, (list, tuple)):
        for v in value:
            _refuse_bytes(v, where, depth + 1)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating intermediate dicts."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"bad override key '{key}'")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key=value`` strings to a raw config dict (in place) and return it."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. data.size=32)")
        key, value = item.split("=", 1)
        set_dotted(tree, key.strip(), parse_value(value.strip()))
    return tree


# ---------------------------------------------------------------------------------------------- errors


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc[:-1]`` (None when it cannot be resolved)."""
    model: Any = Config
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _loc_str(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith(("function-", "union["))))


def format_validation_error(err: ValidationError) -> str:
    """One line for the first problem: the dotted key, what is wrong, and the closest valid key."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = _loc_str(loc)
    if first["type"] == "extra_forbidden":
        model = _model_at(loc)
        hint = ""
        if model is not None:
            names = list(model.model_fields) + [f.alias for f in model.model_fields.values() if f.alias]
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
            if close:
                prefix = ".".join(str(p) for p in loc[:-1])
                hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)"
        return f"unknown config key '{key}'{hint}"
    if first["type"] == "missing":
        return f"missing required config value '{key}'"
    value = first.get("input")
    if first["type"] == "value_error" and isinstance(value, dict):  # a check across fields: its message says it all
        return f"invalid config {key}: {first['msg'].removeprefix('Value error, ').rstrip('.')}"
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = first["msg"].rstrip(".")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"invalid config value {key}={shown}: {msg}{more}"


def validate(tree: dict[str, Any]) -> Config:
    _refuse_bytes(tree, "config")
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


# ---------------------------------------------------------------------------------------------- loading


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    _refuse_bytes(tree, str(path))
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return tree


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    strict: bool | None = None,
) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    tree = load_yaml(path) if path is not None else {}
    apply_overrides(tree, overrides)
    if strict:
        set_dotted(tree, "data.strict", True)
    return validate(tree)


def with_overrides(cfg: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """A copy of ``cfg`` with dotted overrides applied (values already parsed when given as a dict).

    Only the fields the user set travel (``exclude_unset``): a default must stay a default in the copy, because
    some settings read ``model_fields_set`` (a DDPM preset's layers_per_block, explicit flips in
    ``data/orientation.py``)."""
    tree = cfg.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            set_dotted(tree, key, value)
    else:
        apply_overrides(tree, overrides)
    return validate(tree)


def save_resolved(cfg: Config, run_dir: str | os.PathLike[str]) -> Path:
    """Write the resolved config to ``RUN_DIR/config.yaml`` (atomically) and return the path."""
    path = Path(run_dir) / "config.yaml"
    for stale in Path(run_dir).glob(".tmp-config.yaml.*"):  # left by a crash during an earlier write
        stale.unlink(missing_ok=True)
    cfg.save(path)
    return path
