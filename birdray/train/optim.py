"""The training optimizer: timm's factory, with torch's fused kernels where they exist.

timm's ``train.py`` leaves torch to pick the implementation, and on CPU torch picks the
per-tensor Python loop: for resnet18 that step cost 17-24 ms against 6-9 ms fused (batch 16,
2 threads, 2026-12-06), 2-3 % of every training step on this machine for the same arithmetic.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def fused_kwargs(opt: str, device: torch.device) -> dict[str, Any]:
    """``{"fused": True}`` when timm's ``opt`` is a torch optimizer with a fused kernel for
    ``device`` (SGD, Adam, AdamW on CPU and CUDA; Adagrad's is CPU only), else ``{}``: timm's
    own optimizers (lamb, lion, ...) have none."""
    import timm.optim

    cls = timm.optim.get_optimizer_class(opt, bind_defaults=False)
    if device.type not in ("cpu", "cuda") or "fused" not in inspect.signature(cls).parameters:
        return {}
    if issubclass(cls, torch.optim.Adagrad) and device.type != "cpu":
        return {}
    return {"fused": True}


def build_optimizer(
    model: torch.nn.Module,
    opt: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    device: torch.device,
) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` (its parameter groups: no weight decay on norms and
    biases), fused where torch has the kernel."""
    import timm.optim

    return timm.optim.create_optimizer_v2(
        model,
        opt=opt,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        **fused_kwargs(opt, device),
    )
