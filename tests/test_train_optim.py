"""The training optimizer: fused where torch has the kernel, the same arithmetic as timm's."""

from __future__ import annotations

import copy

import pytest
import torch

from birdray.train.optim import build_optimizer, fused_kwargs, optimizer_class, unknown_optimizer

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
        ("lookahead_SGD", "cpu", True),  # timm wraps the fused SGD in its Lookahead
        ("nosuch", "cpu", False),  # timm's factory raises its own error; the checks say it first
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


def test_names_parse_as_timms_factory_parses_them() -> None:
    assert optimizer_class("AdamW") is torch.optim.AdamW
    assert optimizer_class("lookahead_sgd") is torch.optim.SGD
    assert optimizer_class("adamx") is None
    assert unknown_optimizer("lookahead_adamw") == ""
    said = unknown_optimizer("adamx")
    assert said.startswith("timm has no optimizer 'adamx'; did you mean adamax")
    wrapped = build_optimizer(torch.nn.Linear(3, 2), "lookahead_sgd", 0.1, 0.0, 0.9, CPU)
    assert type(wrapped).__name__ == "Lookahead" and wrapped.defaults.get("fused") is True


def test_an_unknown_optimizer_is_refused_before_ray(small_dataset, tmp_path, monkeypatch, capsys):
    """It failed inside the first Ray Train worker, after Ray and the data had started, and was
    retried --max-failures times; the sweep's trials each did the same."""
    import ray

    from birdray.cli import main
    from birdray.config import ConfigError
    from birdray.train.job import TrainConfig, build_trainer

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    monkeypatch.chdir(tmp_path)
    argv = ["--dataset", str(small_dataset), "--batch-size", "2", "--arch", "test_resnet"]
    assert main(["train", *argv, "--opt", "adamx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("birdray train: error: --opt: timm has no optimizer 'adamx'")
    assert len(err.splitlines()) == 1
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("archs: [test_resnet]\ntrain:\n  opt: adamx\n  batch_size: 2\n")
    assert main(["tune", "--config", str(sweep), "--dataset", str(small_dataset)]) == 2
    assert "--train: opt: timm has no optimizer 'adamx'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="opt: timm has no optimizer 'adamx'"):
        # what run_training and each sweep trial build, with no CLI in front of them
        build_trainer(TrainConfig(dataset=str(small_dataset), batch_size=2, opt="adamx"))
    assert not (tmp_path / "runs").exists()
