"""The quality stage: fidelity, diversity, CAS and memorization audit of the synthetic set; applies the filter.

``run_quality(cfg, run_dir)`` reads ``RUN_DIR/synthetic`` and the real data, trains (or reuses) a classifier on
the real training set, computes every figure in ``quality.backbone`` feature space, rewrites the manifest's
``kept`` / ``filter_reason`` / ``confidence`` columns and writes ``RUN_DIR/quality/quality.json`` plus PNG galleries.
See docs/quality.md for the definitions and the gate.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthmed.data.dataset import ImageSet, RealData
from synthmed.io import remove_stale_temps
from synthmed.errors import DataError
from synthmed.io import atomic_write_json
from synthmed.metrics import fidelity, galleries, memorization
from synthmed.metrics.features import CACHE_DIR, FeatureCache, build_extractor, images_key
from synthmed.synthetic import filtering
from synthmed.synthetic.dataset import SyntheticSet

if TYPE_CHECKING:
    from synthmed.config import Config

QUALITY_DIR = "quality"
QUALITY_JSON = "quality.json"
REAL_CLASSIFIER = "real_classifier"
CAS_CLASSIFIER = "cas_classifier"
FINGERPRINT = "fingerprint.json"


def _echo(msg: str) -> None:
    print(f"[quality] {msg}", file=sys.stderr, flush=True)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update((p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str)).encode())
        h.update(b"|")
    return h.hexdigest()


def _set_key(s: ImageSet) -> str:
    return images_key(s.images, "labels:" + hashlib.sha256(s.labels.tobytes()).hexdigest())


def cached_classifier(cfg: Config, train: ImageSet, val: ImageSet, n_classes: int, folder: Path,
                      class_names: list[str]) -> tuple[Any, str]:
    """Train a classifier (or reuse the one in ``folder`` when data, config and seed are unchanged)."""
    from synthmed.classifiers.train import TrainedClassifier, fit_classifier

    fp = _fingerprint(cfg.classifier.model_dump(mode="json"), cfg.imbalance.model_dump(mode="json"), cfg.seed,
                      _set_key(train), _set_key(val))
    fp_file = folder / FINGERPRINT
    if fp_file.is_file():
        try:
            if json.loads(fp_file.read_text(encoding="utf-8")).get("fingerprint") == fp:
                _echo(f"reusing {folder}")
                return TrainedClassifier.load(folder, cfg), fp
        except (ValueError, OSError):
            pass
    _echo(f"training {folder.name} ({cfg.classifier.model}, {len(train)} images)")
    clf = fit_classifier(cfg, train, val, n_classes, cfg.seed, synthetic=None, out_dir=None, progress=False,
                         class_names=class_names)
    clf.save(folder)
    atomic_write_json(fp_file, {"fingerprint": fp, "n_train": len(train), "n_val": len(val)})
    return clf, fp


def vetting_config(cfg: Config) -> Config:
    """The recipe of the real-data classifier that vets synthetic images (and gives the classifier feature space).

    ``filter.vetting_imbalance`` picks its long-tail method; ``auto`` (default) with ``filter.balanced_vetting``
    trains it with class-balanced resampling when ``imbalance.method`` is ``none``: measured on long-tailed
    BloodMNIST, a plain classifier kept 0-2% of the tail-class images at tau 0.5 while keeping 90-100% of the head
    classes (BENCHMARKS.md, the long-tail study). Count-based methods use the real class counts.
    """
    from synthmed.config import with_overrides

    method = cfg.filter.vetting_imbalance
    if method == "auto":
        if not (cfg.filter.balanced_vetting and cfg.imbalance.method == "none"):
            return cfg
        method = "resample"
    if method == cfg.imbalance.method and cfg.imbalance.prior == "real":
        return cfg
    return with_overrides(cfg, {"imbalance.method": method, "imbalance.prior": "real"})


def _prototype_rule(cfg: Config, clf: Any, clf_fp: str, extractor: Any, cache: FeatureCache, real: RealData,
                    syn: ImageSet, f_syn: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """Distances of the synthetic images to their class's real-train centroid in the vetting classifier's feature
    space, the per-class thresholds from real val, and a summary; None when ``filter.prototype`` is off."""
    from synthmed.metrics.features import ClassifierExtractor

    f = cfg.filter
    if f.prototype == "off" or not f.enabled:
        return None
    if extractor.name != "classifier":
        extractor = ClassifierExtractor(clf, clf_fp)
        f_syn = cache.extract(extractor, syn.images)
    C = real.n_classes
    cent = filtering.class_centroids(cache.extract(extractor, real.train.images), real.train.labels, C)
    val_d = filtering.prototype_distance(cache.extract(extractor, real.val.images), real.val.labels, cent)
    thr = filtering.prototype_thresholds(val_d, real.val.labels, C, f.prototype_quantile)
    dist = filtering.prototype_distance(f_syn, syn.labels, cent)
    names = list(real.classes)
    summary = {"space": "vetting classifier", "reference": "real train centroids", "threshold_from": "real val",
               "quantile": f.prototype_quantile, "class_thresholds": dict(zip(names, thr.tolist())),
               "median_distance_per_class": {n: (float(np.median(dist[syn.labels == c]))
                                                 if (syn.labels == c).any() else None) for c, n in enumerate(names)}}
    return dist, thr, summary


def _cap(s: ImageSet, cap: int | None, seed: int) -> ImageSet:
    if cap is None or len(s) <= cap:
        return s
    idx = np.sort(np.random.default_rng(seed).choice(len(s), cap, replace=False))
    return s.subset(idx)


def _accuracy(clf: Any, test: ImageSet, n_classes: int) -> dict[str, Any]:
    from synthmed.metrics.classification import classification_metrics

    m = classification_metrics(test.labels, clf.predict_proba(test.images), n_classes)
    return {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "per_class_recall")}


def _gate(cfg: Config, fid_block: dict[str, Any], conf: np.ndarray, audit: memorization.AuditResult,
          tau: np.ndarray | float) -> dict[str, Any]:
    """Pass/fail of the synthetic set with the reasons (thresholds in ``filter.gate_*``); ``tau`` is the
    confidence threshold, per image when thresholds are per class."""
    f = cfg.filter
    reasons: list[str] = []
    syn, ref = fid_block["synthetic_all"]["overall"], fid_block["real_reference"]["overall"]
    fid_ratio = syn["fid"] / ref["fid"] if ref["fid"] and ref["fid"] > 0 else math.nan
    prec_ratio = syn["precision"] / ref["precision"] if ref["precision"] and ref["precision"] > 0 else math.nan
    classifier_kept = float((conf >= tau).mean()) if len(conf) else math.nan
    copy_fraction = audit.summary["flagged_fraction"]
    if f.gate_max_fid_ratio is not None and fid_ratio > f.gate_max_fid_ratio:
        reasons.append(f"FID is {fid_ratio:.2f}x the real-vs-real reference (max {f.gate_max_fid_ratio})")
    if f.gate_min_precision_ratio is not None and prec_ratio < f.gate_min_precision_ratio:
        reasons.append(f"precision is {prec_ratio:.2f}x the real-vs-real reference (min {f.gate_min_precision_ratio})")
    if f.gate_min_kept_fraction is not None and classifier_kept < f.gate_min_kept_fraction:
        reasons.append(f"the classifier filter keeps {classifier_kept:.1%} (min {f.gate_min_kept_fraction:.0%})")
    if f.gate_max_copy_fraction is not None and copy_fraction > f.gate_max_copy_fraction:
        reasons.append(f"{copy_fraction:.1%} flagged as training copies (max {f.gate_max_copy_fraction:.0%})")
    return {"passed": not reasons, "reasons": reasons, "backbone": fid_block["backbone"],
            "figures": {"fid_ratio": fid_ratio, "precision_ratio": prec_ratio,
                        "classifier_kept_fraction": classifier_kept, "copy_fraction": copy_fraction},
            "thresholds": {k: getattr(f, k) for k in ("gate_max_fid_ratio", "gate_min_precision_ratio",
                                                      "gate_min_kept_fraction", "gate_max_copy_fraction")}}


def _load_inputs(cfg: Config, run_dir: Path, real: RealData | None = None) -> tuple[SyntheticSet, list[dict[str, Any]], ImageSet, RealData]:
    from synthmed.data.load import load_data

    syn_set = SyntheticSet(run_dir)
    rows = syn_set.read_manifest()  # MissingStageError (exit 2) names `synthmed generate`
    if not rows:
        raise DataError(f"{syn_set.manifest_path}: the synthetic set is empty")
    syn = syn_set.load(kept_only=False, rows=rows)
    real = load_data(cfg.data, run_dir) if real is None else real
    if syn.images.shape[1:] != real.train.images.shape[1:]:
        raise DataError(f"synthetic images are {syn.images.shape[1:]} but real images are {real.train.images.shape[1:]} "
                        "(H, W, C): regenerate with the same data settings")
    bad = syn.labels[(syn.labels < 0) | (syn.labels >= real.n_classes)]
    if len(bad):
        raise DataError(f"{syn_set.manifest_path}: label {int(bad[0])} is not a class of {real.source}")
    return syn_set, rows, syn, real


def run_quality(cfg: Config, run_dir: str | Path, data: RealData | None = None) -> Path:
    """Compute the quality report of ``RUN_DIR/synthetic`` and apply the filter; returns quality.json's path.

    ``data`` is the already-loaded real split (loaded from the run directory when None)."""
    run_dir = Path(run_dir)
    syn_set, rows, syn, real = _load_inputs(cfg, run_dir, data)
    qdir = run_dir / QUALITY_DIR
    if qdir.is_dir():
        remove_stale_temps(qdir)  # a crashed earlier attempt may have left temp files behind
    q, classes, C = cfg.quality, list(real.classes), real.n_classes
    out: dict[str, Any] = {"n_synthetic": len(syn), "classes": classes, "backbone": q.backbone,
                           "synthetic_per_class": syn.counts(C)}

    vet_cfg = vetting_config(cfg)
    clf, clf_fp = cached_classifier(vet_cfg, real.train, real.val, C, qdir / REAL_CLASSIFIER, classes)
    trtr = _accuracy(clf, real.test, C)
    probs = clf.predict_proba(syn.images)
    conf = filtering.intended_confidence(probs, syn.labels)

    extractor = build_extractor(q, cfg.is_offline, cfg.device, classifier=clf, classifier_fingerprint=clf_fp)
    cache = FeatureCache(qdir / CACHE_DIR)
    ref = _cap(real.train, q.max_real, cfg.seed)
    val = _cap(real.val, q.max_real, cfg.seed + 1)
    gen_train, gen_notes = memorization.training_images(run_dir, real.train, real.train_pool)
    _echo(f"features ({extractor.name}) for {len(syn)} synthetic, {len(ref)} real train, {len(val)} real val")
    f_syn, f_ref, f_val = (cache.extract(extractor, s.images) for s in (syn, ref, val))
    f_gen = cache.extract(extractor, gen_train.images)

    # memorization audit (pixel + feature space), then the filter's decisions
    audit = memorization.audit(syn, gen_train, real.val, q, f_syn, f_gen, cache.extract(extractor, real.val.images))
    audit.summary["notes"] = gen_notes
    audit.summary["backbone"] = extractor.name
    memorization.write_audit_csv(qdir / "memorization.csv", audit.rows)
    f = cfg.filter
    if f.near_duplicate_space == "pixel":
        dup_vec, dup_thr = memorization.pixel_vectors(syn.images), audit.thresholds["pixel"]
        if dup_thr is not None:
            dup_thr *= math.sqrt(dup_vec.shape[1])  # RMS threshold -> Euclidean on [0, 1] pixels
        if f.near_duplicate_threshold is not None:
            dup_thr = f.near_duplicate_threshold * math.sqrt(dup_vec.shape[1])
    else:
        dup_vec = f_syn
        dup_thr = f.near_duplicate_threshold if f.near_duplicate_threshold is not None else audit.thresholds["feature"]
    thresholds = None
    if f.per_class_confidence == "real_val":
        val_conf = filtering.intended_confidence(clf.predict_proba(real.val.images), real.val.labels)
        thresholds = filtering.class_thresholds(val_conf, real.val.labels, C, f.min_confidence, f.real_val_quantile)
    proto = _prototype_rule(cfg, clf, clf_fp, extractor, cache, real, syn, f_syn)
    decision = filtering.decide(syn_set_ids(rows), syn.labels, conf, f, audit.flags, dup_vec, dup_thr, thresholds,
                                proto[0] if proto else None, proto[1] if proto else None)
    syn_set.write_manifest(filtering.apply_to_manifest(rows, decision, conf))
    out["vetted"] = decision.vetted
    if not decision.vetted:
        _echo("warning: filter.enabled is false: the synthetic set was NOT vetted (all images kept)")
    out["filter"] = {**filtering.filter_stats(syn.labels, decision, classes), "min_confidence": f.min_confidence,
                     "per_class_confidence": f.per_class_confidence,
                     "class_thresholds": (dict(zip(classes, thresholds.tolist())) if thresholds is not None else None),
                     "near_duplicate": {"space": f.near_duplicate_space, "threshold": dup_thr},
                     "vetting_imbalance": vet_cfg.imbalance.method,
                     "prototype": proto[2] if proto else None}
    out["confidence"] = {"model": "real_classifier", "test_of_real_classifier": trtr,
                         "mean_per_class": {n: float(conf[syn.labels == c].mean()) if (syn.labels == c).any() else None
                                            for c, n in enumerate(classes)}}

    # fidelity / diversity in the chosen feature space
    k, subsets = q.pr_k, q.kid_subsets
    fid_block: dict[str, Any] = {"backbone": extractor.name, "backbone_id": extractor.id, "reference_set": "real train"}
    fid_block["real_reference"] = fidelity.fidelity_report(f_ref, ref.labels, f_val, val.labels, classes, k, subsets,
                                                           cfg.seed, extractor.name, echo=False)
    fid_block["synthetic_all"] = fidelity.fidelity_report(f_ref, ref.labels, f_syn, syn.labels, classes, k, subsets,
                                                          cfg.seed, extractor.name)
    if decision.vetted and decision.kept.sum() >= 2:
        fid_block["synthetic_kept"] = fidelity.fidelity_report(f_ref, ref.labels, f_syn[decision.kept],
                                                               syn.labels[decision.kept], classes, k, subsets,
                                                               cfg.seed, extractor.name, echo=False)
    out["fidelity"] = fid_block
    out["memorization"] = audit.summary

    # CAS: train on all generated synthetic images only, test on real test; compare with train-on-real
    if q.cas:
        cas_clf, _ = cached_classifier(cfg, syn, real.val, C, qdir / CAS_CLASSIFIER, classes)
        cas = _accuracy(cas_clf, real.test, C)
        out["cas"] = {"trained_on": "all generated synthetic images (before filtering)", "n_train": len(syn),
                      "synthetic_only": cas, "real_only": trtr, "classifier": cfg.classifier.model, "seed": cfg.seed,
                      "real_only_imbalance": vet_cfg.imbalance.method,
                      "gap_accuracy": cas["accuracy"] - trtr["accuracy"],
                      "gap_balanced_accuracy": cas["balanced_accuracy"] - trtr["balanced_accuracy"]}

    gdir = qdir / galleries.GALLERY_DIR
    out["galleries"] = galleries.class_galleries(syn.images, syn.labels, conf, classes, gdir, q.gallery_k,
                                                 real.train.images, real.train.labels)
    galleries.closest_pairs(syn.images, gen_train.images, audit.pixel_distance, audit.pixel_index, syn.ids,
                            gdir / "closest_pairs.png", flags=audit.flags)
    out["galleries"]["closest_pairs"] = "closest_pairs.png"
    out["gate"] = _gate(cfg, fid_block, conf, audit, thresholds[syn.labels] if thresholds is not None else f.min_confidence)
    out["feature_cache"] = {"hits": cache.hits, "misses": cache.misses}
    path = qdir / QUALITY_JSON
    atomic_write_json(path, _clean(out))
    g = out["gate"]
    _echo(f"gate {'passed' if g['passed'] else 'FAILED: ' + '; '.join(g['reasons'])}; kept "
          f"{out['filter']['overall']['kept']}/{len(syn)}")
    return path


def syn_set_ids(rows: list[dict[str, Any]]) -> list[str]:
    """Manifest ids (the filter keeps the first image of a duplicate group by this order)."""
    return [str(r.get("id", "")) for r in rows]
