"""The training optimizer: fused where torch has the kernel, the same arithmetic as timm's."""

from __future__ import annotations

import copy

import pytest
import torch

from birdray.train.optim import build_optimizer, fused_kwargs

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("opt", "device", "fused"),
    [
        ("sgd", "cpu", True),
        ("momentum", "cuda", True),
        ("adamw", "cpu", True),
        ("adagrad", "cpu", True),
        ("adagrad", "cuda", False),  # torch's fused Adagrad is CPU only
        ("lamb", "cpu", False),  # timm's own: no fused kernel
        ("sgd", "mps", False),
    ],
)
def test_fused_only_where_torch_has_the_kernel(opt: str, device: str, fused: bool) -> None:
    assert fused_kwargs(opt, torch.device(device)) == ({"fused": True} if fused else {})


@pytest.mark.parametrize("opt", ["sgd", "adamw", "lamb"])
def test_steps_match_timms_unfused_optimizer(opt: str) -> None:
    import timm.optim

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(5),
    )
    images, labels = torch.randn(4, 3, 10, 10), torch.tensor([0, 1, 2, 3])
    model(images)  # materialise the lazy layer
    twin, start = copy.deepcopy(model), copy.deepcopy(model)
    ours = build_optimizer(model, opt, 0.1, 1e-4, 0.9, CPU)
    plain = timm.optim.create_optimizer_v2(twin, opt=opt, lr=0.1, weight_decay=1e-4, momentum=0.9)
    assert bool(ours.defaults.get("fused")) == (opt != "lamb")
    assert [g["weight_decay"] for g in ours.param_groups] == [
        g["weight_decay"] for g in plain.param_groups
    ]  # timm's groups kept: no decay on norms and biases
    for _ in range(3):
        for net, optimizer in ((model, ours), (twin, plain)):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    params = zip(model.parameters(), twin.parameters(), start.parameters(), strict=True)
    for ours_p, plain_p, start_p in params:
        torch.testing.assert_close(ours_p, plain_p, rtol=1e-5, atol=1e-6)
        assert not torch.equal(ours_p, start_p)  # every parameter was trained
