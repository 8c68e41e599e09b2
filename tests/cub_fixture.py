"""Hand-built CUB-layout folders for reader/ingest tests: real photos, odd modes, broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PART_NAMES = [
    "back",
    "beak",
    "belly",
    "breast",
    "crown",
    "forehead",
    "left eye",
    "left leg",
    "left wing",
    "nape",
    "right eye",
    "right leg",
    "right wing",
    "tail",
    "throat",
]


def real_photos() -> list[Path]:
    """Real JPEGs shipped inside installed wheels (GUIDE §5)."""
    import matplotlib
    import skimage

    candidates = [
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
        Path(skimage.__file__).parent / "data" / "chelsea.png",
        Path(skimage.__file__).parent / "data" / "astronaut.png",
    ]
    return [p for p in candidates if p.is_file()]


def jpeg_bytes(size=(64, 48), color=(200, 30, 30), mode="RGB", fmt="JPEG", **save) -> bytes:
    img = Image.new("RGB", size, color)
    arr = np.asarray(img).copy()
    arr[: size[1] // 2, : size[0] // 2] = 255 - np.asarray(color, dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def write_layout(
    parent: Path,
    images: list[tuple[int, bytes | None, bool]],
    class_names: list[str] | None = None,
) -> Path:
    """Write ``parent/CUB_200_2011`` with (class_id, bytes or None for a missing file, is_train)."""
    root = parent / "CUB_200_2011"
    (root / "parts").mkdir(parents=True, exist_ok=True)
    (root / "attributes").mkdir(parents=True, exist_ok=True)
    class_names = class_names or [f"{i:03d}.Species_{i}" for i in range(1, 4)]
    (root / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(class_names, 1)))
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "parts", "attrs")}
    for image_id, (class_id, data, is_train) in enumerate(images, 1):
        rel = f"{class_names[class_id - 1]}/img_{image_id}.jpg"
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
        lines["images"].append(f"{image_id} {rel}")
        lines["labels"].append(f"{image_id} {class_id}")
        lines["split"].append(f"{image_id} {int(is_train)}")
        lines["boxes"].append(f"{image_id} 2.0 3.0 20.0 15.0")
        for part_id in range(1, 16):
            vis = part_id % 2
            x, y = (5.0 + part_id, 6.0 + part_id) if vis else (0.0, 0.0)
            lines["parts"].append(f"{image_id} {part_id} {x} {y} {vis}")
        for attr_id in range(1, 313):
            present = int(attr_id % 50 == class_id)
            lines["attrs"].append(f"{image_id} {attr_id} {present} 3 10.0")
    files = {
        "images.txt": "images",
        "image_class_labels.txt": "labels",
        "train_test_split.txt": "split",
        "bounding_boxes.txt": "boxes",
        "parts/part_locs.txt": "parts",
        "attributes/image_attribute_labels.txt": "attrs",
    }
    for name, key in files.items():
        (root / name).write_text("\n".join(lines[key]) + "\n")
    (root / "parts" / "parts.txt").write_text(
        "".join(f"{i} {n}\n" for i, n in enumerate(PART_NAMES, 1))
    )
    (root / "parts" / "part_click_locs.txt").write_text("1 1 5.0 6.0 1 1.5\n")
    (root / "attributes" / "certainties.txt").write_text(
        "1 not visible\n2 guessing\n3 probably\n4 definitely\n"
    )
    (root / "attributes" / "class_attribute_labels_continuous.txt").write_text(
        "".join(" ".join(["1.5"] * 312) + "\n" for _ in class_names)
    )
    (parent / "attributes.txt").write_text(
        "".join(f"{i} has_bill_shape::shape_{i}\n" for i in range(1, 313))
    )
    return root
