"""Classifier training: in-memory tensors, mixing modes, imbalance methods, selection on the REAL val set.

Public API (used by the quality stage and the pipeline)::

    clf = fit_classifier(cfg, train, val, n_classes, seed, synthetic=None, out_dir=None, progress=True)
    clf = fit_plan(cfg, plan, val, n_classes, seed, label="my_policy")   # plan = mixing.plan_mix(...)

With ``synthetic=None`` the classifier trains on ``train`` alone whatever ``cfg.mix`` says (real_only). Every
``mix.policy`` composes with every ``imbalance.method``: the mixing mode decides which images form each batch
(``batches``), the imbalance method how batches are drawn (``resample``), how the loss weights samples (class weights,
``drw``, ``mix.synthetic_weight``) or offsets logits (``logit_adjustment``, ``balanced_softmax``), and what happens
after training (``posthoc_la``, ``crt``: ``heads``). The result is a :class:`~.trained.TrainedClassifier`.

Several processes (``accelerate launch`` / torchrun) train one classifier data-parallel: every process builds the
same batch (same seeded draws and augmentation), runs the network on its share of the rows, gathers the logits
(autograd-aware) so that the loss is the whole batch's, and DDP averages the gradients; BatchNorm becomes
SyncBatchNorm on GPUs (on CPU its statistics are per share). Only the main process writes the model.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from synthmed.classifiers.batches import Batch, epoch_batches
from synthmed.classifiers.config import ClassifierConfig
from synthmed.classifiers.heads import check_crt_head, posthoc_adjust, retrain_head
from synthmed.classifiers.imbalance import class_weights, drw_epoch, logit_adjustment, prior_counts
from synthmed.classifiers.losses import batch_loss
from synthmed.classifiers.mixing import MixPlan, empty_like, plan_mix
from synthmed.classifiers.models import Net, build_model, trainable_parameters
from synthmed.classifiers.schedule import lr_schedule, min_lr_floor
from synthmed.classifiers.trained import TrainedClassifier, resolve_device
from synthmed.classifiers.transforms import augment, mix_batch, to_float, to_tensor
from synthmed.data.dataset import ImageSet
from synthmed.errors import DataError, TrainingDivergedError
from synthmed.metrics.classification import balanced_accuracy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from synthmed.config import Config

log = logging.getLogger(__name__)

__all__ = ["fit_classifier", "fit_plan", "TrainedClassifier", "augment", "batch_loss", "epoch_batches", "Batch"]


def _accelerator(device: torch.device, precision: str) -> Any:
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)  # noqa: SLF001 - allow a new precision per run in one process
    GradientState._reset_state()  # noqa: SLF001
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    mp = precision if device.type == "cuda" or precision == "bf16" else "no"
    # split_batches: the processes share each batch (``_logits``), so the prepared LR scheduler steps once per
    # optimizer step (without it accelerate steps it once per process, a schedule N times too fast)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mp,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def _logits(model: Any, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The logits of the whole batch ``x``, this process computing only its share of the rows (data parallelism).

    The gathered logits are the same on every process, so is the loss; the gather's backward sums the processes'
    (identical) gradients, so DDP's average is the whole batch's gradient. Batches smaller than ``world`` run whole
    on every process (identical gradients; their average is the same)."""
    n = len(x)
    if world == 1 or n < world:
        return model(x)
    import warnings

    from torch.distributed.nn.functional import all_gather

    bounds = [r * n // world for r in range(world + 1)]
    local = model(x[bounds[rank]:bounds[rank + 1]])
    size = -(-n // world)
    pad = local.new_zeros((size - len(local), *local.shape[1:]))
    with warnings.catch_warnings():  # deprecated in favour of a functional collective without gloo all-to-all
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(torch.cat([local, pad]))
    return torch.cat([p[: bounds[r + 1] - bounds[r]] for r, p in enumerate(parts)])


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


def _as_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x.float().mean(1, keepdim=True).round().byte()


def _optional(a: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(a, dtype=torch.float32, device=device)


def fit_classifier(cfg: Config, train: ImageSet, val: ImageSet, n_classes: int, seed: int,
                   synthetic: ImageSet | None = None, out_dir: Path | None = None, progress: bool = True,
                   class_names: list[str] | None = None, sources: Sequence[str] | None = None) -> TrainedClassifier:
    """Train ``cfg.classifier`` on ``train`` (+ ``synthetic`` by ``cfg.mix``), select on the real ``val`` set.

    ``sources``: per synthetic image, the id of the real training image it was made from (``mix.policy: augment``)."""
    from synthmed.classifiers.mixing import needs_synthetic

    mix = cfg.mix if synthetic is not None or not needs_synthetic(cfg.mix) else cfg.mix.model_copy(update={"policy": "real_only"})
    plan = plan_mix(mix, train, synthetic, n_classes, seed, sources, class_names=class_names)
    return fit_plan(cfg, plan, val, n_classes, seed, out_dir=out_dir, progress=progress, class_names=class_names)


def fit_plan(cfg: Config, plan: MixPlan, val: ImageSet, n_classes: int, seed: int, out_dir: Path | None = None,
             progress: bool = True, class_names: list[str] | None = None, label: str | None = None) -> TrainedClassifier:
    """Train on a :class:`MixPlan` (see :func:`fit_classifier`); ``label`` names the run on the progress bar."""
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
    device = resolve_device(cfg.device)
    net, info = build_model(cc, channels, size, n_classes, class_names)
    if imb.method == "crt":
        check_crt_head(net)
    if not info["pretrained"] and cc.model != "clip":
        imgs = plan.combined().images.reshape(-1, channels).astype(np.float64) / 255.0
        mean, std = imgs.mean(0), imgs.std(0)
        net.set_normalization(np.resize(mean, net.backbone_channels), np.resize(std, net.backbone_channels))
    acc = _accelerator(device, cc.precision)
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    if world > 1 and device.type == "cuda":
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # type: ignore[assignment]
    net.to(device)
    x_val = _as_channels(to_tensor(val.images), channels)
    gen = torch.Generator().manual_seed(seed)
    syn_counts = plan.synthetic.counts(n_classes) if plan.n_synthetic else [0] * n_classes
    prior = prior_counts(imb, plan.real_training_set.counts(n_classes), syn_counts)
    adj_t = _optional(logit_adjustment(imb, prior), device)
    phases = _phases(plan, cc.epochs)
    total_epochs = sum(p[3] for p in phases)
    first_drw = drw_epoch(imb, total_epochs) if imb.method == "drw" else 1
    best_score, best_state, best_epoch, history, epoch_no = -1.0, None, 0, [], 0
    replaced, seen = 0, 0
    for phase, p, mode, n_epochs, selectable in phases:
        rng = np.random.default_rng([seed, len(history)])
        xr, xs = to_tensor(p.real.images), to_tensor(p.synthetic.images)
        yr, ys = torch.from_numpy(p.real.labels), torch.from_numpy(p.synthetic.labels)
        schedule = [epoch_batches(p, mode, cc.batch_size, rng, imb.method == "resample", n_classes)
                    for _ in range(n_epochs)]
        total = sum(len(b) for b in schedule)
        steps = len(schedule[0])
        opt = _optimizer(cc, net)
        sched = lr_schedule(opt, int(round(cc.warmup_epochs * steps)), total, min_lr_floor(cc.lr, cc.min_lr))
        model, opt, sched = acc.prepare(net, opt, sched)
        gw = [plan.weight_lambda, 1.0 - plan.weight_lambda] if mode == "weighted_loss" else [1.0, 1.0]
        sw = p.synthetic_weight if mode in ("concat", "batch_ratio", "augment") else 1.0
        bar = tqdm(total=n_epochs, desc=f"{label or plan.policy}/{phase} seed {seed}", disable=not progress,
                   leave=False, file=sys.stderr)
        stale = 0
        model.train()
        for batches in schedule:
            epoch_no += 1
            cw_t = _optional(class_weights(imb, prior, epoch_no, total_epochs), device)
            losses = []
            for ri, si in batches:
                ri_t, si_t = torch.from_numpy(ri), torch.from_numpy(si)
                x = torch.cat([xr[ri_t], xs[si_t]]) if len(si) else xr[ri_t]
                y = (torch.cat([yr[ri_t], ys[si_t]]) if len(si) else yr[ri_t]).to(device)
                x = augment(to_float(x, device), cc.augment, gen)
                groups = [len(ri), len(si)] if mode == "weighted_loss" else [len(ri) + len(si), 0]
                x, partner, lam = mix_batch(x, groups, cc, rng, gen)
                with acc.autocast():
                    logits = _logits(model, x, rank, world)
                sample_w = None
                if sw != 1.0 and len(si):
                    sample_w = torch.cat([torch.ones(len(ri)), torch.full((len(si),), sw)]).to(device)
                loss = batch_loss(logits, y, groups, gw, cw_t, adj_t, cc.label_smoothing, partner, lam, sample_w)
                if not torch.isfinite(loss):
                    _save_partial(out_dir if acc.is_main_process else None, acc.unwrap_model(model), best_state,
                                  n_classes,
                                  dict(info, classifier=cc.model_dump(mode="json", by_alias=True),
                                       channels=channels, size=size, class_names=class_names))
                    raise TrainingDivergedError(f"classifier loss became {loss.item()} in epoch {epoch_no}; "
                                                f"lower classifier.lr (now {cc.lr})")
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                if mode == "augment":
                    replaced, seen = replaced + len(si), seen + len(ri) + len(si)
            score = _evaluate(net, x_val, val.labels, n_classes, device, cc.eval_batch_size)
            history.append({"epoch": epoch_no, "phase": phase, "loss": float(np.mean(losses)), "val_balanced_accuracy": score})
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_bacc=f"{score:.3f}")
            if selectable and epoch_no >= first_drw:  # drw: only re-weighted epochs are drw checkpoints
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
        "label": label or plan.policy, "n_train_real": plan.n_real, "n_train_synthetic": plan.n_synthetic,
        "mix_warnings": list(plan.warnings), "imbalance": imb.model_dump(mode="json"),
        "prior_counts": prior.tolist(),
    })
    if imb.method == "drw":
        info["drw_first_epoch"] = first_drw
    if plan.mode == "augment":
        info["augment_replaced_share"] = replaced / max(seen, 1)
    if imb.method == "posthoc_la":
        info["val_balanced_accuracy_before_posthoc"] = best_score
        info.update(posthoc_adjust(net, x_val, val.labels, prior, imb, n_classes, device, cc.eval_batch_size))
    if imb.method == "crt":
        real = plan.real_training_set
        info["val_balanced_accuracy_before_crt"] = best_score
        info.update(retrain_head(net, real, _as_channels(to_tensor(real.images), channels), x_val, val.labels,
                                 n_classes, cc, imb, seed, device))
    net.eval()
    clf = TrainedClassifier(net, n_classes, info, device, cc.eval_batch_size)
    if out_dir is not None and acc.is_main_process:
        clf.save(out_dir)
    acc.wait_for_everyone()
    return clf


def _save_partial(out_dir: Path | None, net: Net, best_state: dict | None, n_classes: int, info: dict) -> None:
    if out_dir is None or best_state is None:
        return
    net.load_state_dict(best_state)
    TrainedClassifier(net, n_classes, dict(info, diverged=True)).save(out_dir)
