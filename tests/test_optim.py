"""The generators' optimizers: AdamW, or Muon on the hidden weights with AdamW on the rest."""

from __future__ import annotations

import copy

import pytest
import torch

from synthmed.generators.optim import MuonAdamW, build_optimizer, orthogonalise


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalise_flattens_the_spectrum(shape):
    """Newton-Schulz maps any matrix to one whose singular values all lie near 1 (Muon's quintic: about 0.7-1.2)."""
    g = torch.Generator().manual_seed(0)
    u, _, vh = torch.linalg.svd(torch.randn(*shape, generator=g), full_matrices=False)
    m = u @ torch.diag(torch.logspace(-1, 1, min(shape))) @ vh  # singular values 0.1 ... 10
    s_in, s_out = torch.linalg.svdvals(m), torch.linalg.svdvals(orthogonalise(m))
    assert orthogonalise(m).shape == m.shape
    assert s_in.max() / s_in.min() > 99
    assert 0.5 < s_out.min() and s_out.max() < 1.3


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_in = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.mid = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 8)
        self.class_embedding = torch.nn.Embedding(3, 8)
        self.conv_out = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x) + self.class_embedding(y)[:, :, None, None]
        return self.conv_out(torch.relu(self.norm(self.mid(h))))


def loss_of(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 6, 6, generator=g), torch.randint(3, (4,), generator=g)
    return (model(x, y) - x).pow(2).mean()


def test_muon_takes_only_the_hidden_weights():
    named = list(Tiny().named_parameters())
    opt = build_optimizer(named, "muon", 1e-3, 0.0)
    name_of = {id(p): n for n, p in named}
    muon, rest = ({name_of[id(p)] for p in g["params"]} for g in opt.param_groups)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    assert muon == {"mid.weight"} and rest == {n for n, _ in named} - muon
    adamw = build_optimizer(named, "adamw", 1e-3, 0.0)
    assert isinstance(adamw, torch.optim.AdamW) and not isinstance(adamw, MuonAdamW)


def test_muon_step_is_orthogonal_and_leaves_the_adamw_part_as_adamw():
    torch.manual_seed(0)
    model = Tiny()
    twin = copy.deepcopy(model)
    before = model.mid.weight.detach().clone()
    opt = build_optimizer(list(model.named_parameters()), "muon", 1e-2, 0.0)
    ref = torch.optim.AdamW([p for n, p in twin.named_parameters() if n != "mid.weight"], lr=1e-2, weight_decay=0.0)
    loss_of(model).backward()
    loss_of(twin).backward()
    grad = model.mid.weight.grad.clone()
    opt.step()
    ref.step()
    assert torch.equal(model.mid.weight.grad, grad)  # gradients restored for whoever looks after the step
    for (n, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        if n != "mid.weight":
            assert torch.allclose(p, q, atol=1e-7), n  # the rest stepped exactly as AdamW
    update = (model.mid.weight - before).reshape(8, -1)
    s = torch.linalg.svdvals(update)
    assert s.max() / s.min() < 2.0  # an orthogonalised direction, unlike the raw gradient's
    rms = update.pow(2).mean().sqrt().item()
    assert 0.1 * 1e-2 < rms < 0.4 * 1e-2  # about AdamW's update RMS (0.2 lr), the match_rms_adamw scaling


def test_muon_state_round_trips_and_training_continues_identically():
    torch.manual_seed(0)
    a = Tiny()
    b = copy.deepcopy(a)
    opt_a = build_optimizer(list(a.named_parameters()), "muon", 1e-2, 0.01)
    for _ in range(2):
        loss_of(a).backward()
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(list(b.named_parameters()), "muon", 1e-2, 0.01)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from disk: torch shares unconverted tensors
    losses = []
    for model, opt in ((a, opt_a), (b, opt_b)):
        loss_of(model).backward()
        opt.step()
        losses.append(loss_of(model).item())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert losses[0] == losses[1]
