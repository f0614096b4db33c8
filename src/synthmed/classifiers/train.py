"""Classifier training: in-memory tensors, per-sample augmentation, mixing modes, selection on the REAL val set.

Public API (used by the quality stage and the pipeline)::

    clf = fit_classifier(cfg, train, val, n_classes, seed, synthetic=None, out_dir=None, progress=True)
    clf.predict_proba(images)  # uint8 (N, H, W, C) -> (N, C)
    clf.features(images)       # penultimate layer, (N, D)
    clf.save(dir); TrainedClassifier.load(dir, cfg)

With ``synthetic=None`` the classifier trains on ``train`` alone whatever ``cfg.mix`` says (real_only).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from synthmed.classifiers.config import AugmentConfig, ClassifierConfig
from synthmed.classifiers.imbalance import balanced_order, class_weights, logit_adjustment
from synthmed.classifiers.mixing import MixPlan, batch_ratio_batches, empty_like, plan_mix
from synthmed.classifiers.models import Net, build_model, trainable_parameters
from synthmed.data.dataset import ImageSet
from synthmed.errors import DataError, TrainingDivergedError, UserError
from synthmed.io import atomic_write_bytes, atomic_write_json
from synthmed.metrics.classification import balanced_accuracy

if TYPE_CHECKING:
    from synthmed.config import Config

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
META = "classifier.json"
Batch = tuple[np.ndarray, np.ndarray]  # (real indices, synthetic indices)


# ----------------------------------------------------------------------------------------------- tensors


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 tensor (N, C, H, W) (converted to float per batch)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def to_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).float().div_(255.0)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-sample flips, rot90 and brightness/contrast jitter of a float batch in [0, 1]."""
    b = x.shape[0]
    dev = x.device

    def coin() -> torch.Tensor:
        return (torch.rand(b, generator=gen) < 0.5).to(dev).view(b, 1, 1, 1)

    if cfg.hflip:
        x = torch.where(coin(), x.flip(3), x)
    if cfg.vflip:
        x = torch.where(coin(), x.flip(2), x)
    if cfg.rot90 and x.shape[2] == x.shape[3]:
        k = torch.randint(0, 4, (b,), generator=gen).to(dev)
        out = x.clone()
        for r in (1, 2, 3):
            sel = k == r
            if sel.any():
                out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
        x = out
    if cfg.brightness > 0:
        f = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * cfg.brightness
        x = x * f.to(dev).view(b, 1, 1, 1)
    if cfg.contrast > 0:
        f = (1.0 + (torch.rand(b, generator=gen) * 2 - 1) * cfg.contrast).to(dev).view(b, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * f + mean
    return x.clamp_(0.0, 1.0)


def mix_batch(x: torch.Tensor, groups: list[int], cc: ClassifierConfig, rng: np.random.Generator,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """MixUp / CutMix within each group (real part, synthetic part): returns images, partner index and lambda."""
    modes = [m for m, a in (("mixup", cc.mixup), ("cutmix", cc.cutmix)) if a > 0]
    if not modes:
        return x, None, 1.0
    mode = modes[int(rng.integers(len(modes)))]
    alpha = cc.mixup if mode == "mixup" else cc.cutmix
    lam = float(rng.beta(alpha, alpha))
    perm, start = [], 0
    for n in groups:
        perm.append(start + torch.randperm(n, generator=gen))
        start += n
    index = torch.cat(perm).to(x.device)
    if mode == "mixup":
        return lam * x + (1 - lam) * x[index], index, lam
    h, w = x.shape[2], x.shape[3]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[index][:, :, y0:y1, x0:x1]
    return x, index, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def batch_loss(logits: torch.Tensor, y: torch.Tensor, groups: list[int], group_weights: list[float],
               class_w: torch.Tensor | None = None, adjust: torch.Tensor | None = None, smoothing: float = 0.0,
               partner: torch.Tensor | None = None, lam: float = 1.0) -> torch.Tensor:
    """sum_g weight_g * (class-weighted mean CE over group g); empty groups contribute 0.

    With one group of weight 1 and no class weights this is plain mean cross-entropy; with groups (real, synthetic)
    and weights (lambda, 1 - lambda) it is DataDream's lambda * CE(real) + (1 - lambda) * CE(synthetic).
    """
    if adjust is not None:
        logits = logits + adjust
    ce = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=smoothing)
    w = class_w[y] if class_w is not None else torch.ones_like(ce)
    if partner is not None and lam < 1.0:
        y_b = y[partner]
        ce = lam * ce + (1 - lam) * F.cross_entropy(logits.float(), y_b, reduction="none", label_smoothing=smoothing)
        if class_w is not None:
            w = lam * w + (1 - lam) * class_w[y_b]
    total, start = logits.new_zeros((), dtype=torch.float32), 0
    for n, gw in zip(groups, group_weights):
        if n and gw:
            sl = slice(start, start + n)
            total = total + gw * (w[sl] * ce[sl]).sum() / w[sl].sum().clamp_min(1e-12)
        start += n
    return total


# ----------------------------------------------------------------------------------------------- result


@dataclass
class TrainedClassifier:
    """A trained network plus what is needed to use, save and reload it."""

    net: Net
    n_classes: int
    info: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eval_batch_size: int = 256

    @torch.no_grad()
    def _run(self, images: np.ndarray, what: str) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
        self.net.eval()
        out = []
        for i in range(0, len(images), self.eval_batch_size):
            x = to_float(to_tensor(images[i:i + self.eval_batch_size]), self.device)
            if x.shape[1] != self.net.in_channels:
                x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
            out.append((self.net.features(x) if what == "features" else self.net(x)).float().cpu())
        if not out:
            return np.zeros((0, self.n_classes if what != "features" else self.net.feature_dim), np.float32)
        return torch.cat(out).numpy()

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, "logits")

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(self.logits(images)).double()
        return torch.softmax(z, dim=1).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.logits(images).argmax(axis=1)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, "features")

    def save(self, out_dir: str | Path) -> Path:
        from safetensors.torch import save

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.net.state_dict().items()}
        atomic_write_bytes(out / WEIGHTS, save(state))
        atomic_write_json(out / META, {"n_classes": self.n_classes, **self.info})
        return out / WEIGHTS

    @classmethod
    def load(cls, out_dir: str | Path, cfg: Config | None = None) -> TrainedClassifier:
        """Rebuild the network (from the saved classifier settings, or ``cfg.classifier``) and load its weights."""
        from synthmed.safety import load_state_dict

        out = Path(out_dir)
        if not (out / META).is_file() or not (out / WEIGHTS).is_file():
            raise UserError(f"no trained classifier in {out} (expected {WEIGHTS} and {META})")
        info = json.loads((out / META).read_text(encoding="utf-8"))
        cc = ClassifierConfig.model_validate(info["classifier"]) if "classifier" in info else cfg.classifier  # type: ignore[union-attr]
        net, _ = build_model(cc, int(info["channels"]), int(info["size"]), int(info["n_classes"]),
                             info.get("class_names"), load_pretrained=False)
        net.load_state_dict(load_state_dict(out / WEIGHTS), strict=True)
        device = _device(cfg.device if cfg is not None else "cpu")
        net.to(device).eval()
        return cls(net, int(info["n_classes"]), info, device, cc.eval_batch_size)


# ----------------------------------------------------------------------------------------------- training


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={spec} but no CUDA GPU is available (use device=cpu or auto)")
    return torch.device(spec)


def _accelerator(device: torch.device, precision: str) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)  # noqa: SLF001 - allow a new precision per run in one process
    GradientState._reset_state()  # noqa: SLF001
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    mp = precision if device.type == "cuda" or precision == "bf16" else "no"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mp)


def _chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    parts = [order[i:i + size] for i in range(0, len(order), size)]
    if len(parts) > 1 and len(parts[-1]) == 1:  # a batch of one breaks BatchNorm: merge it into the previous one
        last = parts.pop()
        parts[-1] = np.concatenate([parts[-1], last])
    return parts


def epoch_batches(plan: MixPlan, mode: str, batch_size: int, rng: np.random.Generator, resample: bool,
                  n_classes: int) -> list[Batch]:
    """The batches of one epoch as (real indices, synthetic indices)."""
    n_r, n_s = plan.n_real, plan.n_synthetic
    none = np.zeros(0, np.int64)
    if mode == "batch_ratio":
        return batch_ratio_batches(n_r, n_s, batch_size, plan.batch_ratio, rng)
    if mode == "weighted_loss":
        order = balanced_order(plan.real.labels, n_classes, rng) if resample else rng.permutation(n_r)
        real_parts = _chunks(order, batch_size)
        cycles = int(np.ceil(len(real_parts) * batch_size / max(n_s, 1))) + 1
        stream = np.concatenate([rng.permutation(n_s) for _ in range(cycles)])
        return [(p, stream[i * batch_size:(i + 1) * batch_size]) for i, p in enumerate(real_parts)]
    labels = np.concatenate([plan.real.labels, plan.synthetic.labels])
    order = balanced_order(labels, n_classes, rng) if resample else rng.permutation(len(labels))
    if not len(labels):
        return [(none, none)]
    return [(p[p < n_r], p[p >= n_r] - n_r) for p in _chunks(order, batch_size)]


def _schedule(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _optimizer(cc: ClassifierConfig, net: Net) -> torch.optim.Optimizer:
    params = trainable_parameters(net)
    if cc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cc.lr, momentum=cc.momentum, weight_decay=cc.weight_decay)
    return torch.optim.AdamW(params, lr=cc.lr, weight_decay=cc.weight_decay)


def _evaluate(net: Net, x: torch.Tensor, y: np.ndarray, n_classes: int, device: torch.device, bs: int) -> float:
    net.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            preds.append(net(to_float(x[i:i + bs], device)).argmax(1).cpu())
    net.train()
    return balanced_accuracy(y, torch.cat(preds).numpy(), n_classes) if preds else float("nan")


def _phases(plan: MixPlan, epochs: int) -> list[tuple[str, MixPlan, str, int, bool]]:
    """(name, plan, mode, epochs, selectable) per training phase."""
    if plan.mode != "pretrain_then_finetune":
        return [("train", plan, plan.mode, epochs, True)]
    e1 = min(max(int(round(plan.pretrain_fraction * epochs)), 1), max(epochs - 1, 1))
    pre = MixPlan(plan.policy, "concat", empty_like(plan.real), plan.synthetic)
    fine = MixPlan(plan.policy, "concat", plan.real, empty_like(plan.synthetic))
    return [("pretrain", pre, "concat", e1, False), ("finetune", fine, "concat", max(epochs - e1, 1), True)]


def fit_classifier(cfg: Config, train: ImageSet, val: ImageSet, n_classes: int, seed: int,
                   synthetic: ImageSet | None = None, out_dir: Path | None = None, progress: bool = True,
                   class_names: list[str] | None = None) -> TrainedClassifier:
    """Train ``cfg.classifier`` on ``train`` (+ ``synthetic`` by ``cfg.mix``), select on the real ``val`` set."""
    from synthmed.classifiers.mixing import needs_synthetic

    mix = cfg.mix if synthetic is not None or not needs_synthetic(cfg.mix) else cfg.mix.model_copy(update={"policy": "real_only"})
    plan = plan_mix(mix, train, synthetic, n_classes, seed)
    return fit_plan(cfg, plan, val, n_classes, seed, out_dir=out_dir, progress=progress, class_names=class_names)


def fit_plan(cfg: Config, plan: MixPlan, val: ImageSet, n_classes: int, seed: int, out_dir: Path | None = None,
             progress: bool = True, class_names: list[str] | None = None) -> TrainedClassifier:
    """Train on a :class:`MixPlan` (see :func:`fit_classifier`)."""
    from tqdm.auto import tqdm

    cc, imb = cfg.classifier, cfg.imbalance
    ref = plan.real if plan.n_real else plan.synthetic
    if len(ref) == 0:
        raise DataError("the training set is empty")
    if len(val) == 0:
        raise DataError("the validation set is empty: checkpoint selection needs real val images")
    channels, size = ref.channels, ref.size[0]
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    device = _device(cfg.device)
    net, info = build_model(cc, channels, size, n_classes, class_names)
    if not info["pretrained"] and cc.model != "clip":
        imgs = plan.combined().images.reshape(-1, channels).astype(np.float64) / 255.0
        mean, std = imgs.mean(0), imgs.std(0)
        net.set_normalization(np.resize(mean, net.backbone_channels), np.resize(std, net.backbone_channels))
    acc = _accelerator(device, cc.precision)
    device = acc.device
    net.to(device)
    x_val = to_tensor(val.images)
    if x_val.shape[1] != channels:
        x_val = x_val.repeat(1, 3, 1, 1) if x_val.shape[1] == 1 else x_val.float().mean(1, keepdim=True).round().byte()
    gen = torch.Generator().manual_seed(seed)
    best_score, best_state, best_epoch, history, epoch_no = -1.0, None, 0, [], 0
    for phase, p, mode, n_epochs, selectable in _phases(plan, cc.epochs):
        rng = np.random.default_rng([seed, len(history)])
        xr, xs = to_tensor(p.real.images), to_tensor(p.synthetic.images)
        yr, ys = torch.from_numpy(p.real.labels), torch.from_numpy(p.synthetic.labels)
        counts = np.bincount(np.concatenate([p.real.labels, p.synthetic.labels]), minlength=n_classes)
        cw = class_weights(imb, counts)
        cw_t = torch.as_tensor(cw, dtype=torch.float32, device=device) if cw is not None else None
        adj = logit_adjustment(imb, counts)
        adj_t = torch.as_tensor(adj, dtype=torch.float32, device=device) if adj is not None else None
        schedule = [epoch_batches(p, mode, cc.batch_size, rng, imb.method == "resample", n_classes)
                    for _ in range(n_epochs)]
        total = sum(len(b) for b in schedule)
        steps = len(schedule[0])
        opt = _optimizer(cc, net)
        sched = _schedule(opt, int(round(cc.warmup_epochs * steps)), total)
        model, opt, sched = acc.prepare(net, opt, sched)
        gw = [plan.weight_lambda, 1.0 - plan.weight_lambda] if mode == "weighted_loss" else [1.0, 1.0]
        bar = tqdm(total=n_epochs, desc=f"{plan.policy}/{phase} seed {seed}", disable=not progress,
                   leave=False, file=sys.stderr)
        stale = 0
        model.train()
        for batches in schedule:
            epoch_no += 1
            losses = []
            for ri, si in batches:
                ri_t, si_t = torch.from_numpy(ri), torch.from_numpy(si)
                x = torch.cat([xr[ri_t], xs[si_t]]) if len(si) else xr[ri_t]
                y = (torch.cat([yr[ri_t], ys[si_t]]) if len(si) else yr[ri_t]).to(device)
                x = augment(to_float(x, device), cc.augment, gen)
                groups = [len(ri), len(si)] if mode == "weighted_loss" else [len(ri) + len(si), 0]
                x, partner, lam = mix_batch(x, groups, cc, rng, gen)
                with acc.autocast():
                    logits = model(x)
                loss = batch_loss(logits, y, groups, gw, cw_t, adj_t, cc.label_smoothing, partner, lam)
                if not torch.isfinite(loss):
                    _save_partial(out_dir, acc.unwrap_model(model), best_state, n_classes,
                                  dict(info, classifier=cc.model_dump(mode="json", by_alias=True),
                                       channels=channels, size=size, class_names=class_names))
                    raise TrainingDivergedError(f"classifier loss became {loss.item()} in epoch {epoch_no}; "
                                                f"lower classifier.lr (now {cc.lr})")
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            score = _evaluate(net, x_val, val.labels, n_classes, device, cc.eval_batch_size)
            history.append({"epoch": epoch_no, "phase": phase, "loss": float(np.mean(losses)), "val_balanced_accuracy": score})
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_bacc=f"{score:.3f}")
            if selectable:
                if score > best_score:
                    best_score, best_epoch, stale = score, epoch_no, 0
                    best_state = copy.deepcopy(acc.unwrap_model(model).state_dict())
                else:
                    stale += 1
                    if cc.patience is not None and stale >= cc.patience:
                        break
        bar.close()
        net = acc.unwrap_model(model)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    info.update({
        "classifier": cc.model_dump(mode="json", by_alias=True), "channels": channels, "size": size,
        "class_names": class_names, "epochs_run": epoch_no, "best_epoch": best_epoch,
        "val_balanced_accuracy": best_score, "history": history, "seed": seed, "policy": plan.policy,
        "n_train_real": plan.n_real, "n_train_synthetic": plan.n_synthetic, "mix_warnings": list(plan.warnings),
        "imbalance": imb.model_dump(mode="json"),
    })
    clf = TrainedClassifier(net, n_classes, info, device, cc.eval_batch_size)
    if out_dir is not None:
        clf.save(out_dir)
    return clf


def _save_partial(out_dir: Path | None, net: Net, best_state: dict | None, n_classes: int, info: dict) -> None:
    if out_dir is None or best_state is None:
        return
    net.load_state_dict(best_state)
    TrainedClassifier(net, n_classes, dict(info, diverged=True)).save(out_dir)
