"""Classifier networks: a small CNN, the OCT study's CNN, CIFAR-style ResNet-20/32 (``resnet_cifar``), torchvision
ResNets, and open_clip ViTs (LoRA or linear probe).

Every network is a :class:`Net`: it takes float images in [0, 1] (N, C, H, W) with the data's channel count, repeats
grayscale to 3 channels when the backbone needs it, normalizes per channel (buffers, saved with the weights),
computes ``features`` (the penultimate layer) and ``head`` logits.

CLIP LoRA: open_clip's towers use ``nn.MultiheadAttention`` with a fused ``in_proj_weight`` (q, k, v stacked).
peft 0.21 can wrap a whole ``MultiheadAttention`` only (LoRA on q, k, v *and* out_proj at once, by merging weights
around each call); it cannot target q and v alone, nor apply LoRA dropout there. Each attention layer is therefore
replaced by a :class:`LoRAAttention` (same frozen parameters and names) that adds ``s B_q A_q dropout(x)`` to q and
``s B_v A_v dropout(x)`` to v (k untouched): the q/v LoRA of Hu et al. with dropout, as in CLIP-LoRA / CytoDiff, on
the image tower, the text tower or both (``classifier.clip.lora_towers``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthmed.classifiers.cnns import OctCNN, SmallCNN, xavier_init
from synthmed.classifiers.config import ClassifierConfig
from synthmed.classifiers.resnet_cifar import DEPTHS, cifar_resnet
from synthmed.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Net(nn.Module):
    """Normalization + backbone (-> features) + head (-> logits)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, in_channels: int, backbone_channels: int,
                 feature_dim: int, input_size: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.in_channels = in_channels
        self.backbone_channels = backbone_channels
        self.feature_dim = feature_dim
        self.input_size = input_size
        self.register_buffer("mean", torch.full((backbone_channels,), 0.5))
        self.register_buffer("std", torch.full((backbone_channels,), 0.25))

    def set_normalization(self, mean: Any, std: Any) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1).clamp_min(1e-3)
        if mean_t.numel() == 1:
            mean_t, std_t = mean_t.repeat(self.backbone_channels), std_t.repeat(self.backbone_channels)
        self.mean.copy_(mean_t)
        self.std.copy_(std_t)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.backbone_channels:
            x = x.repeat(1, self.backbone_channels // x.shape[1], 1, 1)
        x = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------------- ResNet


def resolve_stem(stem: str, size: int) -> str:
    """``auto`` = ``small`` up to 64 px, ``imagenet`` above."""
    return ("small" if size <= 64 else "imagenet") if stem == "auto" else stem


def _resnet(name: str, size: int, stem: str = "auto") -> tuple[nn.Module, int]:
    """torchvision ResNet with a stem for the input size.

    ``small``: 3x3 stride-1 conv, no max pooling (full resolution: best for 28-64 px, most compute);
    ``strided``: 3x3 stride-2 conv, no max pooling (half resolution: about 4x less compute than ``small``);
    ``imagenet``: torchvision's 7x7 stride-2 conv + max pooling (quarter resolution).
    """
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    stem = resolve_stem(stem, size)
    if stem in ("small", "strided"):
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1 if stem == "small" else 2, padding=1, bias=False)
        net.maxpool = nn.Identity()
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def load_backbone_weights(net: Net, path: str) -> int:
    """Load matching tensors (name and shape) from a weights file into the backbone; returns how many."""
    from synthmed.safety import load_state_dict

    state = load_state_dict(path)
    own = net.backbone.state_dict()
    for prefix in ("backbone.", "module.", ""):
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        picked = {k: v for k, v in picked.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if picked:
            net.backbone.load_state_dict(picked, strict=False)
            return len(picked)
    raise ConfigError(f"classifier.pretrained={path}: no tensor matches the {type(net.backbone).__name__} backbone")


# ----------------------------------------------------------------------------------------------- CLIP


class LoRAQV(nn.Module):
    """Low-rank updates of the q and v projections of one attention layer (Hu et al. 2022, as in CLIP-LoRA and
    CytoDiff): ``dq = (alpha / r) B_q A_q dropout(x)``, ``dv`` alike; k untouched, B initialised to zero."""

    def __init__(self, dim: int, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim, self.scale = dim, alpha / r
        self.a_q = nn.Parameter(torch.empty(r, dim))
        self.b_q = nn.Parameter(torch.zeros(dim, r))
        self.a_v = nn.Parameter(torch.empty(r, dim))
        self.b_v = nn.Parameter(torch.zeros(dim, r))
        self.drop = nn.Dropout(dropout)
        nn.init.kaiming_uniform_(self.a_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.a_v, a=math.sqrt(5))

    def q(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(self.drop(x), self.a_q), self.b_q)

    def v(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(self.drop(x), self.a_v), self.b_v)

    def delta_weight(self) -> torch.Tensor:
        """The update of a fused (3d, d) ``in_proj_weight`` without dropout: (s B_q A_q, 0, s B_v A_v)."""
        zeros = self.a_q.new_zeros(self.dim, self.dim)
        return self.scale * torch.cat([self.b_q @ self.a_q, zeros, self.b_v @ self.a_v], dim=0)


class LoRAAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (same parameter names, frozen) whose q and v projections get a :class:`LoRAQV`
    update with dropout on its input; attention itself is PyTorch SDPA. Built by :meth:`wrap`."""

    lora: LoRAQV

    @classmethod
    def wrap(cls, mha: nn.MultiheadAttention, r: int, alpha: float, dropout: float) -> LoRAAttention:
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:  # noqa: SLF001
            raise ConfigError("CLIP LoRA needs attention with a fused q/k/v projection (no bias_k / zero attention)")
        w = mha.in_proj_weight
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                  batch_first=mha.batch_first, device=w.device, dtype=w.dtype)
        new.load_state_dict(mha.state_dict())
        for p in new.parameters():
            p.requires_grad_(False)
        new.lora = LoRAQV(mha.embed_dim, r, alpha, dropout).to(w.device)
        new.register_load_state_dict_pre_hook(_rename_parametrized)
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,  # type: ignore[override]
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if key_padding_mask is not None:
            raise NotImplementedError("LoRAAttention: key_padding_mask is not supported (open_clip passes none)")
        if self.batch_first is False:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q = F.linear(query, wq, bq) + self.lora.q(query)
        k = F.linear(key, wk, bk)
        v = F.linear(value, wv, bv) + self.lora.v(value)
        n, length, dim = q.shape
        heads = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], heads, dim // heads).transpose(1, 2)

        mask = attn_mask
        if mask is not None:
            if mask.dtype == torch.bool:  # nn.MultiheadAttention: True = not allowed; SDPA: True = allowed
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask, float("-inf"))
            mask = mask.to(q.dtype)
            if mask.dim() == 3:
                mask = mask.view(n, heads, length, -1)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0,
                                             is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, dim))
        return (out.transpose(0, 1) if self.batch_first is False else out), None


_OLD = "parametrizations.in_proj_weight."


def _rename_parametrized(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """Read classifiers saved when the LoRA was a parametrization of ``in_proj_weight`` (same numbers, old names)."""
    for key in [k for k in state if k.startswith(prefix + _OLD)]:
        rest = key[len(prefix + _OLD):]
        state[prefix + ("in_proj_weight" if rest == "original" else "lora." + rest.removeprefix("0."))] = state.pop(key)


def add_lora_qv(module: nn.Module, r: int, alpha: float, dropout: float = 0.0) -> int:
    """Replace every ``nn.MultiheadAttention`` under ``module`` by a :class:`LoRAAttention`; returns how many."""
    n = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention) and not isinstance(child, LoRAAttention):
                setattr(parent, name, LoRAAttention.wrap(child, r, alpha, dropout))
                n += 1
    return n


class CosineHead(nn.Module):
    """Logits = scale * cos(image embedding, class-prompt text embedding); text embeddings are a fixed buffer."""

    def __init__(self, text_embeddings: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("text", F.normalize(text_embeddings.float(), dim=-1))
        self.scale = float(scale)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(feats, dim=-1) @ self.text.t()


class PromptHead(nn.Module):
    """Logits = scale * cos(image embedding, text embedding of each class prompt), the prompts encoded at every call
    by the (LoRA-adapted, otherwise frozen) text tower ``clip`` (an open_clip CLIP whose image tower was removed)."""

    def __init__(self, clip: nn.Module, tokens: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("tokens", tokens, persistent=False)  # re-derived from the class names on reload
        self.scale = float(scale)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        text = self.clip.encode_text(self.tokens, normalize=True)  # type: ignore[operator]
        return self.scale * F.normalize(feats, dim=-1) @ text.to(feats.dtype).t()


def _clip_model(cc: Any) -> tuple[nn.Module, Any]:
    import open_clip
    from open_clip.model import CLIP

    model_cfg = dict(cc.model_cfg) if cc.model_cfg else open_clip.get_model_config(cc.arch)
    if model_cfg is None:
        raise ConfigError(f"classifier.clip.arch={cc.arch}: unknown open_clip model (try ViT-B-16 or ViT-B-32)")
    model_cfg.pop("custom_text", None)
    quick = bool(model_cfg.pop("quick_gelu", False))
    model = CLIP(**model_cfg, quick_gelu=quick)
    if cc.pretrained:
        from synthmed.safety import load_state_dict

        state = load_state_dict(cc.pretrained)
        state = state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, _ = model.load_state_dict(state, strict=False)
        if len(missing) > len(state):
            raise ConfigError(f"classifier.clip.pretrained={cc.pretrained}: does not match {cc.arch}")
    context = int(model_cfg.get("text_cfg", {}).get("context_length", 77))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
    return model, tokenizer


def build_clip(cc: Any, in_channels: int, n_classes: int, class_names: list[str] | None) -> tuple[Net, dict]:
    """The CLIP classifier. ``head=lora``: q/v LoRA on the towers of ``lora_towers``; without the text tower the
    class-prompt embeddings are computed once and the text tower dropped, with it they are recomputed every call."""
    model, tokenizer = _clip_model(cc)
    visual = model.visual
    size = visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    for p in model.parameters():
        p.requires_grad_(False)
    feature_dim = int(model.text_projection.shape[1] if model.text_projection is not None else model.embed_dim)
    info: dict[str, Any] = {"clip_arch": cc.arch, "clip_head": cc.head, "clip_image_size": size}
    if cc.head == "lora":
        names = class_names or [f"class {i}" for i in range(n_classes)]
        tokens = tokenizer([cc.prompt.format(n.replace("_", " ")) for n in names])
        scale = float(model.logit_scale.exp().clamp(max=100.0))
        if "image" in cc.lora_towers:
            add_lora_qv(visual, cc.lora_r, cc.lora_alpha, cc.lora_dropout)
        if "text" in cc.lora_towers:
            model.visual = nn.Identity()  # the image tower is the Net's backbone; the head keeps the text tower
            add_lora_qv(model.transformer, cc.lora_r, cc.lora_alpha, cc.lora_dropout)
            head: nn.Module = PromptHead(model, tokens, scale)
        else:
            with torch.no_grad():
                head = CosineHead(model.encode_text(tokens, normalize=True), scale)
        info.update(clip_lora_towers=list(cc.lora_towers), clip_lora_r=cc.lora_r, clip_lora_alpha=cc.lora_alpha,
                    clip_lora_dropout=cc.lora_dropout)
    else:
        head = nn.Linear(feature_dim, n_classes)
    net = Net(visual, head, in_channels, 3, feature_dim, input_size=size)
    net.set_normalization(CLIP_MEAN, CLIP_STD)
    return net, info


# ----------------------------------------------------------------------------------------------- factory


def build_model(cc: ClassifierConfig, in_channels: int, size: int, n_classes: int,
                class_names: list[str] | None = None, load_pretrained: bool = True) -> tuple[Net, dict]:
    """Build the network named by ``classifier.model``; returns it and facts for metrics.json.

    ``load_pretrained=False`` skips reading weight files (used when a saved classifier is reloaded).
    """
    info: dict[str, Any] = {"model": cc.model, "pretrained": False}
    if cc.model == "cnn":
        backbone = SmallCNN(in_channels)
        net = Net(backbone, nn.Linear(backbone.out_dim, n_classes), in_channels, in_channels, backbone.out_dim)
    elif cc.model == "oct_cnn":  # the study's conv 3 -> 16: grayscale is repeated to 3 channels
        oct_net = OctCNN(size)
        net = Net(oct_net, nn.Linear(oct_net.out_dim, n_classes), in_channels, 3, oct_net.out_dim, input_size=size)
    elif cc.model in DEPTHS:
        cifar = cifar_resnet(cc.model, in_channels)
        fc = nn.Linear(cifar.out_dim, n_classes)
        nn.init.kaiming_normal_(fc.weight)
        net = Net(cifar, fc, in_channels, in_channels, cifar.out_dim)
        info["shortcut"] = "A"
    elif cc.model in ("resnet18", "resnet50"):
        backbone, dim = _resnet(cc.model, size, cc.resnet_stem)
        net = Net(backbone, nn.Linear(dim, n_classes), in_channels, 3, dim)
        info["stem"] = resolve_stem(cc.resnet_stem, size)
    elif cc.model == "clip":
        if not load_pretrained:
            cc = cc.model_copy(update={"clip": cc.clip.model_copy(update={"pretrained": None})})
        net, extra = build_clip(cc.clip, in_channels, n_classes, class_names)
        info.update(extra)
        info["pretrained"] = bool(cc.clip.pretrained)
        info["pretrained_path"] = cc.clip.pretrained
        return net, info
    else:  # pragma: no cover - pydantic guards the literal
        raise ConfigError(f"unknown classifier.model {cc.model}")
    info["init"] = cc.init
    if cc.init == "xavier":
        xavier_init(net)
    if cc.pretrained and load_pretrained:
        info["pretrained_tensors"] = load_backbone_weights(net, cc.pretrained)
        if net.backbone_channels == 3:
            net.set_normalization(IMAGENET_MEAN, IMAGENET_STD)
    info["pretrained"] = bool(cc.pretrained)
    info["pretrained_path"] = cc.pretrained
    return net, info


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    return [p for p in net.parameters() if p.requires_grad]
