"""BatchedLoRA: K adapters trained together equal K peft LoRAs trained one at a time."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from labkit.lora import BatchedLoRA, lora_delta, lora_factors
from labkit.models.mlp import make_mlp
from labkit.training import fit_stacked, lora_parameters

torch.set_num_threads(1)


class Nested(nn.Module):
    """A base with nested names and a non-target Linear, to check that targets are matched exactly."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 16)
        self.blocks = nn.ModuleList([nn.ModuleDict({"fc1": nn.Linear(16, 16), "fc2": nn.Linear(16, 16)})
                                     for _ in range(2)])
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b["fc2"](torch.tanh(b["fc1"](self.norm(h))))
        return self.out(h)


TARGETS = ["inp", "blocks.0.fc1", "blocks.1.fc2", "out"]


def _data(K, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, N, 12, generator=g), torch.randint(0, 5, (K, N), generator=g)


def test_init_depends_only_on_seed_and_matches_peft_distribution():
    torch.manual_seed(0)
    base = Nested()
    two = BatchedLoRA(base, TARGETS, seeds=[5, 6], r=4, alpha=8)
    one = BatchedLoRA(base, TARGETS, seeds=[6], r=4, alpha=8)
    for i in range(len(TARGETS)):
        assert torch.equal(two.A[i][1], one.A[i][0])
        assert not torch.equal(two.A[i][0], two.A[i][1])
        assert torch.count_nonzero(two.B[i]) == 0
    d_in = base.inp.in_features
    assert two.A[0].abs().max() <= 1 / d_in**0.5
    assert two.A[0].abs().max() > 0.8 / d_in**0.5  # uniform over the whole kaiming range
    assert two.scaling == 2.0
    assert all(not p.requires_grad for p in base.parameters())


def test_batched_training_equals_peft_loop():
    K, N, steps, lr = 3, 10, 25, 1e-2
    torch.manual_seed(0)
    base = Nested()
    X, y = _data(K, N)
    lora = BatchedLoRA(copy.deepcopy(base), TARGETS, seeds=[11, 12, 13], r=4, alpha=8)
    inits = [lora.export_adapter(k) for k in range(K)]  # peft models holding each slice's initial factors

    def loss_fn(step):
        logits = lora(X)  # [K, N, 5]
        return nn.functional.cross_entropy(logits.reshape(K * N, -1), y.reshape(-1), reduction="none") \
            .reshape(K, N).mean(1)

    params = lora_parameters(lora)
    history = fit_stacked(params, loss_fn, steps, torch.optim.Adam(params.values(), lr=lr))
    assert history.shape == (steps, K)
    assert (history[-1] < history[0]).all()  # it learned something, so the comparison below is not vacuous

    for k, model in enumerate(inits):
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert len(trainable) == 2 * len(TARGETS)
        opt = torch.optim.Adam(trainable, lr=lr)
        for step in range(steps):
            loss = nn.functional.cross_entropy(model(X[k]), y[k])
            assert abs(loss.item() - history[step, k].item()) < 1e-5
            opt.zero_grad()
            loss.backward()
            opt.step()
        state = {n.replace(".default", ""): p for n, p in model.named_parameters() if "lora_" in n}
        loop = lora_factors(state)
        batched = lora.factors(k)
        assert set(loop) == set(TARGETS)
        for name in TARGETS:
            assert torch.allclose(loop[name][0], batched[name][0], atol=1e-5)
            assert torch.allclose(loop[name][1], batched[name][1], atol=1e-5)
            assert batched[name][1].abs().max() > 1e-3  # B moved away from zero


def test_exported_adapter_loads_with_peft_and_reproduces_outputs(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    K = 3
    torch.manual_seed(1)
    base = make_mlp(64, (32,), 10)
    pristine = copy.deepcopy(base)
    lora = BatchedLoRA(base, ["fc1", "fc2"], seeds=[1, 2, 3], r=4, alpha=16)
    with torch.no_grad():
        for B in lora.B:
            B.normal_()  # a non-trivial adapter
    x = torch.randn(K, 7, 64)
    out = lora(x)
    assert out.shape == (K, 7, 10)
    peft_model = lora.peft_model()
    for k in range(K):
        lora.export_adapter(k, peft_model).save_pretrained(str(tmp_path / f"a{k}"))
    for k in range(K):
        loaded = PeftModel.from_pretrained(copy.deepcopy(pristine), str(tmp_path / f"a{k}"))
        assert torch.allclose(loaded(x[k]), out[k], atol=1e-5)
        factors = lora_factors(load_file(str(tmp_path / f"a{k}" / "adapter_model.safetensors")))
        assert set(factors) == {"fc1", "fc2"}
        A, B = factors["fc1"]
        assert A.shape == (4, 64) and B.shape == (32, 4)
        merged = pristine.fc1.weight + lora_delta(A, B, lora.scaling)
        assert torch.allclose(merged, loaded.merge_and_unload().fc1.weight, atol=1e-5)
    # the base itself is untouched by attaching and exporting
    assert torch.equal(base.fc1.weight, pristine.fc1.weight)
    assert torch.allclose(base(x[0]), pristine(x[0]))


def test_clear_errors():
    base = make_mlp(64, (32,), 10)
    with pytest.raises(ValueError, match="not modules of the base"):
        BatchedLoRA(base, ["fc9"], seeds=[0])
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        BatchedLoRA(base, ["act1"], seeds=[0])
    lora = BatchedLoRA(base, ["fc1"], seeds=[0, 1])
    with pytest.raises(ValueError, match="leading dimension of 2"):
        lora(torch.randn(3, 4, 64))
    with pytest.raises(ValueError, match="no LoRA factors"):
        lora_factors({"fc1.weight": torch.zeros(1)})
