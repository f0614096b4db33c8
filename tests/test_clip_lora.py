"""CLIP q/v LoRA (``classifier.clip``): the LoRA attention equals plain attention with merged weights, dropout acts
on the LoRA path only in training, and LoRA on the text tower trains the class-prompt embeddings (CytoDiff)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from synthmed.classifiers.config import ClassifierConfig, ClipConfig
from synthmed.classifiers.models import LoRAAttention, PromptHead, build_model

from test_classifiers import TINY_CLIP


def _random_lora(att: LoRAAttention) -> None:
    for p in (att.lora.b_q, att.lora.b_v):
        nn.init.normal_(p)


@pytest.mark.parametrize("batch_first", [True, False])
def test_lora_attention_equals_merged_weights(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    x = torch.randn(3, 5, 8) if batch_first else torch.randn(5, 3, 8)  # batch 3, length 5
    causal = torch.full((5, 5), float("-inf")).triu(1)  # open_clip's text mask (float, additive)
    att = LoRAAttention.wrap(mha, r=2, alpha=4.0, dropout=0.5).eval()
    for mask in (None, causal, causal.isinf()):  # a bool mask means "not allowed" as in nn.MultiheadAttention
        want = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        assert torch.allclose(att(x, x, x, need_weights=False, attn_mask=mask)[0], want, atol=1e-6)  # B = 0
    _random_lora(att)
    merged = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    merged.load_state_dict(mha.state_dict())
    with torch.no_grad():
        merged.in_proj_weight += att.lora.delta_weight()
    got = att(x, x, x, need_weights=False, attn_mask=causal)[0]
    assert torch.allclose(got, merged(x, x, x, need_weights=False, attn_mask=causal)[0], atol=1e-5)
    assert not torch.allclose(got, mha(x, x, x, need_weights=False, attn_mask=causal)[0], atol=1e-3)


def test_lora_dropout_only_in_training_and_only_on_the_lora_path() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 4, 8)
    att = LoRAAttention.wrap(mha, r=2, alpha=4.0, dropout=0.5)
    att.train()
    a, b = att(x, x, x)[0], att(x, x, x)[0]
    assert torch.allclose(a, b)  # B = 0: dropout on the LoRA input changes nothing, the base path has none
    _random_lora(att)
    a, b = att(x, x, x)[0], att(x, x, x)[0]
    assert not torch.allclose(a, b)
    att.eval()
    assert torch.allclose(att(x, x, x)[0], att(x, x, x)[0])
    assert all(not p.requires_grad for n, p in att.named_parameters() if not n.startswith("lora."))


def _clip(**clip: object) -> ClassifierConfig:
    return ClassifierConfig(model="clip", clip=ClipConfig(model_cfg=TINY_CLIP, lora_r=2, **clip))


def test_text_tower_lora_trains_the_prompt_embeddings() -> None:
    torch.manual_seed(0)
    cc = _clip(lora_towers=["image", "text"], lora_dropout=0.1, lora_alpha=4.0)
    net, info = build_model(cc, in_channels=3, size=16, n_classes=3, class_names=["a", "b", "c"])
    assert isinstance(net.head, PromptHead)
    assert info["clip_lora_towers"] == ["image", "text"] and info["clip_lora_dropout"] == 0.1
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert any(n.startswith("backbone.") for n in trainable) and any(n.startswith("head.clip.") for n in trainable)
    assert all(".attn.lora." in n for n in trainable)
    image_layers = sum(isinstance(m, LoRAAttention) for m in net.backbone.modules())
    text_layers = sum(isinstance(m, LoRAAttention) for m in net.head.modules())
    assert image_layers == TINY_CLIP["vision_cfg"]["layers"] and text_layers == TINY_CLIP["text_cfg"]["layers"]
    x = torch.rand(4, 3, 16, 16)
    net.train()
    net(x).logsumexp(1).sum().backward()
    text = {n: p.grad for n, p in net.named_parameters() if n.startswith("head.clip.") and p.requires_grad}
    assert text and all(g is not None for g in text.values())
    assert all(g.abs().sum() > 0 for n, g in text.items() if n.endswith(("b_q", "b_v")))  # B = 0: A gets none yet
    # after a step on the text LoRA the class embeddings (and the logits) move; the image embedding does not
    net.eval()
    with torch.no_grad():
        before, feats = net(x), net.features(x)
        for n, p in net.named_parameters():
            if n.startswith("head.clip.") and n.endswith(("b_q", "b_v")):
                p.add_(0.5)
        assert torch.equal(net.features(x), feats) and not torch.allclose(net(x), before)


def test_image_only_lora_keeps_fixed_prompt_embeddings_and_reloads() -> None:
    cc = _clip(lora_towers=["image"])
    net, _ = build_model(cc, in_channels=3, size=16, n_classes=2, class_names=["a", "b"])
    assert not any(n.startswith("head.") for n, p in net.named_parameters() if p.requires_grad)
    twin, _ = build_model(_clip(lora_towers=["image", "text"]), 3, 16, 2, ["a", "b"], load_pretrained=False)
    state = twin.state_dict()
    again, _ = build_model(_clip(lora_towers=["image", "text"]), 3, 16, 2, ["a", "b"], load_pretrained=False)
    again.load_state_dict(state, strict=True)  # a saved text-LoRA classifier reloads (prompt tokens re-derived)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(again.eval()(x), twin.eval()(x))


def test_lora_tower_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="twice"):
        ClipConfig(lora_towers=["image", "image"])
    with pytest.raises(ValidationError, match="head=lora"):
        ClipConfig(head="linear_probe", lora_towers=["text"])
    with pytest.raises(ValidationError):
        ClipConfig(lora_towers=[])
    with pytest.raises(ValidationError):
        ClipConfig(lora_dropout=1.0)


def test_classifiers_saved_with_the_old_parametrization_names_still_load() -> None:
    torch.manual_seed(0)
    net, _ = build_model(_clip(), 3, 16, 2, ["a", "b"])
    for m in net.modules():
        if isinstance(m, LoRAAttention):
            _random_lora(m)
    old = {}
    for k, v in net.state_dict().items():  # the names of the parametrization the LoRA used to be
        k = k.replace("attn.in_proj_weight", "attn.parametrizations.in_proj_weight.original")
        old[k.replace("attn.lora.", "attn.parametrizations.in_proj_weight.0.")] = v
    assert any(".parametrizations.in_proj_weight.0.b_q" in k for k in old)
    again, _ = build_model(_clip(), 3, 16, 2, ["a", "b"], load_pretrained=False)
    again.load_state_dict(old, strict=True)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(again.eval()(x), net.eval()(x))
