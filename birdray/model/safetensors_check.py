"""Whether a file is a whole safetensors file, from its header alone (milliseconds).

The header is an 8-byte length and a JSON table of tensors with their byte ranges; a file whose
tensors do not fill it exactly (random bytes, a pickle, a truncated copy) is refused here, by the
registry and the pre-flight, not by the loader after Serve has started.
"""

from __future__ import annotations

import json
from pathlib import Path

from birdray.model.errors import ModelError

SAFETENSORS_MAX_HEADER = 100 << 20  # the safetensors library's own bound on the JSON header


def check_safetensors(weights: Path) -> None:
    """``weights`` has a safetensors header (8-byte length, JSON table of tensors) whose tensors
    fill the file exactly: random bytes, a pickle or a truncated copy are named here, in
    milliseconds, not by the loader after Serve has started."""
    size = weights.stat().st_size
    with open(weights, "rb") as fh:
        length = int.from_bytes(fh.read(8), "little") if size >= 8 else -1
        if not 0 < length <= min(size - 8, SAFETENSORS_MAX_HEADER):
            raise _not_safetensors(weights, f"header length {length} in a {size}-byte file")
        try:
            header = json.loads(fh.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _not_safetensors(weights, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _not_safetensors(weights, "its header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise _not_safetensors(weights, "its header lists no tensors")
    end = 0
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise _not_safetensors(weights, f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    if 8 + length + end != size:
        raise _not_safetensors(
            weights, f"its tensors need {8 + length + end} bytes, the file has {size} (truncated?)"
        )


def _not_safetensors(weights: Path, why: str) -> ModelError:
    return ModelError(f"{weights} is not a whole safetensors file: {why}")
