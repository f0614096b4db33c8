"""Steps after normal training that change only the decision layer: post-hoc logit adjustment and classifier
re-training (cRT). Both choose what they choose on the REAL val set.

* ``posthoc_la`` (Menon et al. 2021): predictions use z - tau * log(prior); tau is the grid value
  (``imbalance.posthoc_taus``) with the best real-val balanced accuracy, stored as ``info["logit_offset"]``.
* ``crt`` (Kang et al. 2020, decoupling): the backbone is frozen (eval mode, BatchNorm statistics fixed), the linear
  head is re-initialised and re-trained for ``imbalance.crt_epochs`` on class-balanced draws of the REAL training
  images. Features are computed once per image for ``imbalance.crt_views`` views (view 0 plain, the others with the
  training augmentation) and a random view is used per draw, so an epoch costs a linear layer only. The cRT epoch
  with the best real-val balanced accuracy is kept.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthmed.classifiers.batches import chunks
from synthmed.classifiers.config import ClassifierConfig, ImbalanceConfig
from synthmed.classifiers.imbalance import balanced_order, choose_posthoc_tau, log_prior
from synthmed.classifiers.models import Net
from synthmed.classifiers.transforms import augment, to_float
from synthmed.data.dataset import ImageSet
from synthmed.errors import ConfigError
from synthmed.metrics.classification import balanced_accuracy


@torch.no_grad()
def _features(net: Net, x: torch.Tensor, device: torch.device, bs: int, cc: ClassifierConfig | None = None,
              gen: torch.Generator | None = None) -> torch.Tensor:
    out = []
    for i in range(0, len(x), bs):
        xb = to_float(x[i:i + bs], device)
        if cc is not None and gen is not None:
            xb = augment(xb, cc.augment, gen)
        out.append(net.features(xb).float())
    return torch.cat(out)


def posthoc_adjust(net: Net, x_val: torch.Tensor, y_val: np.ndarray, counts: np.ndarray, imb: ImbalanceConfig,
                   n_classes: int, device: torch.device, bs: int) -> dict[str, Any]:
    """Choose tau on real val; returns the facts for ``info`` (``logit_offset`` is what prediction adds)."""
    net.eval()
    with torch.no_grad():
        z = torch.cat([net(to_float(x_val[i:i + bs], device)).float().cpu() for i in range(0, len(x_val), bs)])
    tau, grid = choose_posthoc_tau(z.numpy(), y_val, counts, list(imb.posthoc_taus), n_classes)
    best = max(g["val_balanced_accuracy"] for g in grid)
    return {"posthoc_tau": tau, "posthoc_grid": grid, "logit_offset": (-tau * log_prior(counts)).tolist(),
            "val_balanced_accuracy": best}


def check_crt_head(net: Net) -> None:
    """cRT re-trains a linear head: refuse a network whose head is fixed (CLIP with class-prompt logits)."""
    if not isinstance(net.head, nn.Linear):
        raise ConfigError("imbalance.method=crt re-trains a linear head, and this classifier has none "
                          "(classifier.clip.head=lora: use linear_probe)")


def retrain_head(net: Net, real: ImageSet, x_real: torch.Tensor, x_val: torch.Tensor, y_val: np.ndarray,
                 n_classes: int, cc: ClassifierConfig, imb: ImbalanceConfig, seed: int,
                 device: torch.device) -> dict[str, Any]:
    """cRT on the frozen backbone of ``net`` (changed in place); returns the facts for ``info``."""
    check_crt_head(net)
    if not len(real):
        raise ConfigError("imbalance.method=crt re-trains the head on real training images, and there are none")
    head = net.head
    assert isinstance(head, nn.Linear)
    net.eval()
    gen = torch.Generator().manual_seed(seed + 7)
    rng = np.random.default_rng([seed, 104729])
    bs = cc.eval_batch_size
    views = torch.stack([_features(net, x_real, device, bs, cc if v else None, gen if v else None)
                         for v in range(imb.crt_views)])  # (V, N, D)
    f_val = _features(net, x_val, device, bs)
    y = torch.from_numpy(real.labels).to(device)

    def val_score() -> float:
        with torch.no_grad():
            return balanced_accuracy(y_val, head(f_val).argmax(1).cpu().numpy(), n_classes)

    before = val_score()
    frozen = [(p, p.requires_grad) for p in net.backbone.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    head.reset_parameters()
    lr = imb.crt_lr or cc.lr
    params = list(head.parameters())
    opt: torch.optim.Optimizer = (torch.optim.SGD(params, lr=lr, momentum=cc.momentum, weight_decay=cc.weight_decay)
                                  if cc.optimizer == "sgd" else torch.optim.AdamW(params, lr=lr,
                                                                                   weight_decay=cc.weight_decay))
    steps = imb.crt_epochs * len(chunks(np.arange(len(real)), cc.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s / steps, 1.0))))
    best, best_state, best_epoch, history = -1.0, None, 0, []
    for epoch in range(1, imb.crt_epochs + 1):
        losses = []
        for part in chunks(balanced_order(real.labels, n_classes, rng), cc.batch_size):
            idx = torch.from_numpy(part).to(device)
            view = torch.from_numpy(rng.integers(imb.crt_views, size=len(part))).to(device)
            with torch.enable_grad():
                loss = F.cross_entropy(head(views[view, idx]), y[idx], label_smoothing=cc.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        score = val_score()
        history.append({"epoch": epoch, "phase": "crt", "loss": float(np.mean(losses)), "val_balanced_accuracy": score})
        if score > best:
            best, best_epoch, best_state = score, epoch, copy.deepcopy(head.state_dict())
    assert best_state is not None
    head.load_state_dict(best_state)
    for p, flag in frozen:
        p.requires_grad_(flag)
    return {"crt": {"epochs": imb.crt_epochs, "best_epoch": best_epoch, "views": imb.crt_views, "lr": lr,
                    "val_balanced_accuracy_before": before, "n_real": len(real)},
            "crt_history": history, "val_balanced_accuracy": best}
