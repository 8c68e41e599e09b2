"""What a ``/v1/explain`` request explains: which class (``target_label``) and at what scale
(``at_model_scale``). Both are pure functions of the request and the served model's classes and
data config, kept apart from the ingress's routing so they can be read and tested alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PIL import Image

from birdray.class_names import ClassIndex
from birdray.images import DecodedImage
from birdray.serve.errors import ApiError
from birdray.serve.uploads import shown


def at_model_scale(decoded: DecodedImage, data_config: dict[str, Any], side: int) -> DecodedImage:
    """``decoded`` with its picture shrunk to what the model's eval resize keeps, when it holds
    at least twice the ``side`` the model needs (``decode_side``): the bound a JPEG's draft
    decode already gives, for every format, so a 121 KB PNG of 6000x6000 costs an explanation
    what a photo costs. ``width``/``height`` stay the photo's (``in_photo_pixels``).

    For the configs the Pillow crop reproduces (``covered``: centre crop or squash), the picture is
    resized exactly as the eval transform would resize it (size, filter), which then has nothing
    left to resize: the model sees the pixels ``/v1/predict`` gives it. Other configs keep their
    aspect with the short side at ``side``.
    """
    from birdray.model.crop import covered, eval_geometry

    image = decoded.image
    if min(image.size) < 2 * side:
        return decoded
    if covered(data_config):  # centre crop or squash: the eval resize's own size and filter
        g = eval_geometry(data_config, image.width, image.height)
        size = (round(g.scale_x * image.width), round(g.scale_y * image.height))
        name = str(data_config.get("interpolation", "bilinear")).upper()
        small = image.resize(size, Image.Resampling[name])
    else:
        scale = side / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        small = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return dataclasses.replace(decoded, image=small)


def _number(text: str) -> int | None:
    """ASCII digits as a number (None otherwise); not "²" or "٣", not 10^5000."""
    digits = text.isascii() and text.isdigit() and len(text) <= 9
    return int(text) if digits else None


def target_label(target: str | None, classes: list[str]) -> int | None:
    """The class an explain ``target`` names (None: the predicted one); 422 otherwise.

    A target may be a species' name (``001.Black_footed_Albatross``, or ``Black_footed_Albatross``,
    any case where that names one class: ``ClassIndex``), the number its name starts with,
    spelled as the name spells it (``001``), or a label as ``/v1/predict`` returns it (0-based,
    no leading zeros: ``0``, ``57``). CUB numbers species from 1 with three digits and labels
    count from 0, so ``100``-``199`` are both a label and another species' number: a target
    read two ways that name two classes is refused, with both readings, never guessed.
    """
    if target is None or not target.strip():
        return None
    text = target.strip()
    index = ClassIndex.of(classes)
    readings: dict[int, str] = {}
    named = index.get(text)
    if named is not None:
        readings[named] = f"the species {classes[named]!r}"
    number = _number(text)
    if number is not None:
        if str(number) == text and number < len(classes):
            readings.setdefault(number, f"label {number} ({classes[number]!r})")
        numbered = [  # spelled as the name spells it: 001 is species 001, 1 is label 1
            label
            for label, name in enumerate(classes)
            if "." in name and name.split(".", 1)[0] == text
        ]
        for label in numbered:
            readings.setdefault(label, f"species number {number} ({classes[label]!r})")
    if len(readings) == 1:
        return next(iter(readings))
    if readings:
        ways = " or ".join(list(readings.values())[:3])
        raise ApiError(
            422,
            "invalid_parameter",
            f"target {shown(text)} is ambiguous: it could mean {ways}; send the species' name",
        )
    could = index.could_mean(text)
    detail = f" (it could mean {', '.join(repr(c) for c in could[:3])})" if could else ""
    if number is not None:
        detail = f" (labels are 0-{len(classes) - 1}, written without leading zeros)"
    raise ApiError(
        422, "invalid_parameter", f"unknown or ambiguous target class {shown(text)}{detail}"
    )
