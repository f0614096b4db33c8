"""The ``train`` stage: every (policy, seed) -> ``RUN_DIR/classifiers/<policy>/seed<k>/``.

Each run folder holds ``model.safetensors`` (+ ``classifier.json``), ``metrics.json`` (real test metrics and the
facts of the run), ``confusion.csv`` and ``predictions.csv``. A run whose ``metrics.json`` exists is skipped
(resumable) unless ``force``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthmed.classifiers.guards import check_no_leakage, near_duplicate_guard
from synthmed.classifiers.mixing import needs_synthetic, plan_mix
from synthmed.classifiers.policies import policy_kind, trained_kind
from synthmed.errors import ConfigError
from synthmed.layout import RunLayout
from synthmed.io import atomic_write_csv, atomic_write_json, remove_stale_temps
from synthmed.metrics.classification import classification_metrics

if TYPE_CHECKING:
    import numpy as np

    from synthmed.config import Config
    from synthmed.data.dataset import ImageSet, RealData

log = logging.getLogger(__name__)
_IMBALANCE_FACTS = ("prior_counts", "drw_first_epoch", "posthoc_tau", "posthoc_grid", "logit_offset",
                    "val_balanced_accuracy_before_posthoc", "crt", "crt_history", "val_balanced_accuracy_before_crt",
                    "augment_replaced_share")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


def _load_data(cfg: Config, run_dir: Path) -> RealData:
    from synthmed.data.load import load_data

    return load_data(cfg.data, run_dir)


def _load_synthetic(run_dir: Path) -> tuple[ImageSet, list[str]]:
    """The kept synthetic images and, per image, the real training image it was made from (manifest ``source``,
    else ``source_image``; "" when none)."""
    from synthmed.synthetic.dataset import SyntheticSet

    syn = SyntheticSet(run_dir)
    rows = [r for r in syn.read_manifest() if r["kept"]]
    return syn.load(kept_only=True, rows=rows), [str(r.get("source") or r.get("source_image") or "") for r in rows]


def _track(cfg: Config, out: Path, policy: str, seed: int, history: list[dict[str, Any]]) -> None:
    """The training curve (loss, real-val balanced accuracy per epoch) to ``tracking`` (RUN_DIR/tracking/...)."""
    if cfg.tracking == "none":
        return
    from synthmed.tracking import tracker_for

    run_dir = out.parents[2]  # RUN_DIR/classifiers/<policy>/seed<k>
    settings = {"classifier": cfg.classifier.model_dump(mode="json"), "mix": cfg.mix.model_dump(mode="json"),
                "imbalance": cfg.imbalance.model_dump(mode="json")}
    with tracker_for(cfg.tracking, run_dir, f"classifier/{policy}/seed{seed}", settings) as tracker:
        for row in history:
            tracker.log({"classifier/loss": row.get("loss"),
                         "classifier/val_balanced_accuracy": row.get("val_balanced_accuracy")}, int(row["epoch"]))


def policy_configs(cfg: Config, policies: list[str] | None) -> dict[str, Config]:
    """name -> config with the policy's dotted overrides applied (all of ``run.policies`` when None)."""
    from synthmed.config import with_overrides

    names = list(cfg.run.policies) if policies is None else list(policies)
    out = {}
    for name in names:
        if name not in cfg.run.policies:
            raise ConfigError(f"unknown policy '{name}'; run.policies has: {', '.join(cfg.run.policies) or 'none'}")
        if not _NAME.match(name):
            raise ConfigError(f"policy name '{name}' must be letters, digits, '_', '-', '.', '=' or '+'")
        out[name] = with_overrides(cfg, dict(cfg.run.policies[name]))
    return out


def run_dir_of(run_dir: Path, policy: str, seed: int) -> Path:
    return RunLayout(run_dir).classifier(policy, seed)


def train(cfg: Config, run_dir: str | Path, policies: list[str] | None = None, seeds: list[int] | None = None,
          force: bool = False, progress: bool = True, data: RealData | None = None) -> list[dict[str, Any]]:
    """Train every selected policy for every seed; returns the metrics.json dicts (existing ones reused).

    ``data`` is the already-loaded real split (loaded from the run directory when None)."""
    run_dir = Path(run_dir)
    configs = policy_configs(cfg, policies)
    seed_list = list(cfg.run.seeds if seeds is None else seeds)
    todo = [(n, c, s) for n, c in configs.items() for s in seed_list]
    layout = RunLayout(run_dir)
    pending = [t for t in todo if force or not layout.classifier_metrics(t[0], t[2]).is_file()]
    if pending and data is None:
        data = _load_data(cfg, run_dir)
    synthetic, sources = None, None
    if data is not None:
        check_no_leakage(run_dir, data.val, data.test)
        if any(needs_synthetic(c.mix) for n, c, _ in pending):
            synthetic, sources = _load_synthetic(run_dir)
            check_no_leakage(run_dir, data.val, data.test, synthetic)
            # near-copies (pHash) of val/test images among the synthetic and the generator's training images
            by_id = dict(zip(synthetic.ids, sources))
            synthetic, _ = near_duplicate_guard(run_dir, data.val, data.test, synthetic, pool=data.train_pool,
                                                distance=cfg.data.near_duplicate_distance, strict=cfg.data.strict)
            sources = [by_id[i] for i in synthetic.ids] if synthetic is not None else None
    rows = []
    for name, pcfg, seed in todo:
        out = run_dir_of(run_dir, name, seed)
        if layout.classifier_metrics(name, seed).is_file() and not force:
            rows.append(json.loads(layout.classifier_metrics(name, seed).read_text(encoding="utf-8")))
            continue
        assert data is not None
        uses = needs_synthetic(pcfg.mix)
        rows.append(train_one(pcfg, data, name, seed, out, synthetic if uses else None,
                              cfg.run.policies[name], progress, sources if uses else None))
    return rows


def train_one(cfg: Config, data: RealData, policy: str, seed: int, out: Path, synthetic: ImageSet | None,
              overrides: dict[str, Any], progress: bool = True, sources: list[str] | None = None) -> dict[str, Any]:
    """Train one classifier and write its folder (``sources``: see :func:`~.mixing.plan_mix`)."""
    from accelerate import PartialState

    from synthmed.classifiers.train import fit_plan

    if out.is_dir():
        remove_stale_temps(out)  # a crashed earlier attempt may have left temp files behind
    plan = plan_mix(cfg.mix, data.train, synthetic, data.n_classes, seed, sources, class_names=list(data.classes))
    clf = fit_plan(cfg, plan, data.val, data.n_classes, seed, out_dir=out, progress=progress,
                   class_names=list(data.classes), label=policy)
    proba = clf.predict_proba(data.test.images)
    test = classification_metrics(data.test.labels, proba, data.n_classes)
    val = classification_metrics(data.val.labels, clf.predict_proba(data.val.images), data.n_classes)
    info = clf.info
    metrics: dict[str, Any] = {
        "policy": policy, "policy_kind": trained_kind(cfg, plan.n_synthetic),
        "configured_kind": policy_kind(cfg), "seed": seed, "overrides": overrides,
        "mix": cfg.mix.model_dump(mode="json", by_alias=True),
        "imbalance": cfg.imbalance.model_dump(mode="json"),
        "model": cfg.classifier.model, "pretrained": bool(info.get("pretrained")),
        "pretrained_path": info.get("pretrained_path"),
        "classes": list(data.classes), "n_train_real": plan.n_real, "n_train_synthetic": plan.n_synthetic,
        "train_real_per_class": plan.real.counts(data.n_classes),
        "train_synthetic_per_class": plan.synthetic.counts(data.n_classes) if plan.n_synthetic else [0] * data.n_classes,
        "synthetic_requested_per_class": plan.requested,
        "synthetic_shortfall_per_class": None if plan.requested is None else [
            max(int(w) - int(g), 0) for w, g in zip(plan.requested, plan.synthetic.counts(data.n_classes))],
        "n_val": len(data.val), "n_test": len(data.test),
        "epochs": cfg.classifier.epochs, "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
        "val_balanced_accuracy": info["val_balanced_accuracy"], "warnings": list(plan.warnings),
        "test": test, "val": val, "history": info["history"],
        "imbalance_info": {k: info[k] for k in _IMBALANCE_FACTS if k in info},
    }
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall", "auc_macro_ovr"):
        metrics[key] = test[key]
    state = PartialState()  # fit_plan's Accelerator set it up; several processes: rank 0 writes the files
    if state.process_index == 0:
        _track(cfg, out, policy, seed, info.get("history") or [])
        _write_outputs(out, data, proba, test, metrics)
    state.wait_for_everyone()
    log.info("%s seed %d: test balanced accuracy %.4f", policy, seed, test["balanced_accuracy"])
    return metrics


def _write_outputs(out: Path, data: RealData, proba: np.ndarray, test: dict[str, Any],
                   metrics: dict[str, Any]) -> None:
    """confusion.csv, predictions.csv, then metrics.json (last: its presence marks the run as done)."""
    k = data.n_classes
    atomic_write_csv(out / "confusion.csv",
                     [{"true": data.classes[i], **{data.classes[j]: test["confusion"][i][j] for j in range(k)}}
                      for i in range(k)], ["true", *data.classes])
    pred = proba.argmax(1)
    atomic_write_csv(out / "predictions.csv",
                     [{"id": data.test.ids[i], "label": int(data.test.labels[i]), "pred": int(pred[i]),
                       **{f"p_{c}": f"{proba[i, j]:.6g}" for j, c in enumerate(data.classes)}}
                      for i in range(len(pred))],
                     ["id", "label", "pred", *[f"p_{c}" for c in data.classes]])
    atomic_write_json(out / "metrics.json", metrics)  # last: its presence marks the run as done


def summary_row(m: dict[str, Any]) -> dict[str, Any]:
    """A flat row of the headline numbers of one metrics.json (for sweeps)."""
    return {k: m.get(k) for k in ("policy", "seed", "model", "n_train_real", "n_train_synthetic", "accuracy",
                                  "balanced_accuracy", "macro_f1", "auc_macro_ovr", "val_balanced_accuracy")}


__all__ = ["train", "train_one", "policy_configs", "run_dir_of", "summary_row"]
