"""Lab 00's LoRA primer states three facts about a peft LoRA and one about peft's merge; these tests pin them on
the same kind of model the notebook uses (``make_mlp`` with a LoRA on ``fc1``), so the text cannot drift from peft.
"""

from __future__ import annotations

import copy

import pytest
import torch

from labkit.exercise_bank.lab00 import lora_update, numerical_rank
from labkit.lora import peft_config
from labkit.models import make_mlp

peft = pytest.importorskip("peft")


def _wrapped(r: int, alpha: float, seed: int = 0):
    torch.manual_seed(seed)
    base = make_mlp(64, (32,), 10)
    return base, peft.get_peft_model(copy.deepcopy(base), peft_config(["fc1"], r=r, alpha=alpha))


def test_training_starts_at_w_because_b_is_zero():
    base, lora = _wrapped(r=4, alpha=8.0)
    fc1 = lora.base_model.model.fc1
    assert torch.count_nonzero(fc1.lora_B["default"].weight) == 0
    assert torch.count_nonzero(fc1.lora_A["default"].weight) > 0
    x = torch.rand(16, 64)
    with torch.no_grad():
        assert torch.equal(lora(x), base(x))


def test_only_a_and_b_train_and_their_size_is_r_times_din_plus_dout():
    _, lora = _wrapped(r=4, alpha=8.0)
    trainable = {n: p.numel() for n, p in lora.named_parameters() if p.requires_grad}
    assert sorted(trainable) == ["base_model.model.fc1.lora_A.default.weight",
                                 "base_model.model.fc1.lora_B.default.weight"]
    assert sum(trainable.values()) == 4 * (64 + 32)


@pytest.mark.parametrize(("r", "alpha"), [(4, 8.0), (3, 5.0)])
def test_peft_merges_exactly_the_update_of_exercise_00_lora(r, alpha):
    base, lora = _wrapped(r=r, alpha=alpha)
    fc1 = lora.base_model.model.fc1
    with torch.no_grad():  # a trained B is nonzero; any values will do for the merge rule
        fc1.lora_B["default"].weight.copy_(torch.randn(32, r, generator=torch.Generator().manual_seed(1)))
    A, B = fc1.lora_A["default"].weight.detach(), fc1.lora_B["default"].weight.detach()
    merged = copy.deepcopy(lora).merge_and_unload()
    expected = base.fc1.weight.detach() + lora_update(A, B, alpha)
    torch.testing.assert_close(merged.fc1.weight.detach(), expected, rtol=1e-6, atol=1e-7)
    delta = merged.fc1.weight.detach() - base.fc1.weight.detach()
    assert numerical_rank(delta, 1e-4) == r  # the update has rank r ...
    assert numerical_rank(merged.fc1.weight.detach(), 1e-4) == 32  # ... the published layer is full rank


def test_rslora_scales_by_alpha_over_sqrt_r():
    torch.manual_seed(0)
    base = make_mlp(64, (32,), 10)
    config = peft_config(["fc1"], r=4, alpha=8.0)
    config.use_rslora = True
    lora = peft.get_peft_model(copy.deepcopy(base), config)
    fc1 = lora.base_model.model.fc1
    with torch.no_grad():
        fc1.lora_B["default"].weight.copy_(torch.randn(32, 4, generator=torch.Generator().manual_seed(2)))
    A, B = fc1.lora_A["default"].weight.detach(), fc1.lora_B["default"].weight.detach()
    delta = copy.deepcopy(lora).merge_and_unload().fc1.weight.detach() - base.fc1.weight.detach()
    torch.testing.assert_close(delta, 8.0 / 4**0.5 * (B @ A), rtol=1e-5, atol=1e-6)
