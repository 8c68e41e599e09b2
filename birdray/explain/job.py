"""``birdray explain``: explain one image with the model package that classifies it.

Writes an overlay PNG and a JSON per method to ``--out`` and prints the part ranking. An image
from an ingested dataset (``--dataset DIR --image-id N``) is scored against its true part
annotations; a plain file has none, so the species' typical part profile from ``explain-eval``
(``explain/part_profiles.json`` in the package) is shown instead, when the package has one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from birdray import storage
from birdray.config import field
from birdray.data.manifest import DatasetError, load_manifest
from birdray.explain.attribution import METHODS, explain
from birdray.explain.parts import load_part_profiles, score_parts, species_profile
from birdray.images import ImageError, decode_image
from birdray.model.errors import ModelError
from birdray.model.factory import pick_device, set_threads
from birdray.model.package import load_package
from birdray.registry.ref import ModelChoice


@dataclass
class ExplainConfig(ModelChoice):
    image: str = field("", "image file to explain (or use --dataset and --image-id)")
    method: str = field(
        "default", f"{' | '.join(METHODS)} | all | default: the package's measured best "
        "(explain/methods.md from explain-eval; gradcam if never evaluated); lists work"
    )  # fmt: skip
    target: int | None = field(None, "class label to explain (default: the predicted class)")
    dataset: str = field("", "ingested dataset folder: explain one of its images with its parts")
    image_id: int | None = field(None, "CUB image id (from 1) within --dataset; required with it")
    out: str = field("runs/explain", "folder for the overlay PNG and JSON")
    radius: float = field(0.1, "part radius, relative to sqrt(bbox w * h)")
    steps: int = field(32, "Integrated Gradients steps")
    baseline: str = field("blur", "Integrated Gradients baseline: blur | black | white | mean")
    nt_samples: int = field(8, "SmoothGrad noisy samples")
    nt_stdev: float = field(0.15, "SmoothGrad noise, as a fraction of the input range")
    regions: int = field(3, "top regions to report (and box on the overlay)")
    threads: int = field(0, "torch threads (0: torch's default)")
    device: str = field("auto", "auto: CUDA when this machine has it | cpu | cuda (else fails)")


def load_dataset_image(dataset: str, image_id: int) -> tuple[Image.Image, dict[str, Any]]:
    """The stored image of ``image_id`` and its annotations (label, bbox, parts, part names)."""
    import pyarrow.dataset as pads

    manifest = load_manifest(dataset)
    fs, shards_path = storage.filesystem(storage.join(dataset, manifest["shards_dir"]))
    shards = pads.dataset(shards_path, filesystem=fs, format="parquet", partitioning="hive")
    columns = ["image_id", "image", "label", "class_name", "bbox", "parts", "split"]
    rows = shards.to_table(columns=columns, filter=pads.field("image_id") == image_id).to_pylist()
    if not rows:
        raise DatasetError(f"image id {image_id} is not in {dataset} (quarantined or unknown)")
    row = rows[0]
    row["part_names"] = manifest.get("part_names") or []
    return decode_image(row.pop("image")).image, row


def _methods(text: str, package_path: Path) -> list[str]:
    from birdray.explain.compare import default_method

    names = list(METHODS) if text.strip() == "all" else [m.strip() for m in text.split(",")]
    names = [default_method(package_path, METHODS) if m == "default" else m for m in names]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)} or all")
    return names


def _print_ranking(title: str, ranking: list[tuple[str, float]], chance: dict[str, float]) -> None:
    print(title)
    for rank, (part, share) in enumerate(ranking, 1):
        extra = f"   (chance {chance[part]:.3f})" if part in chance else ""
        print(f"  {rank:2d}. {part:<12} {share:.3f}{extra}")


def run_explain(cfg: ExplainConfig) -> Path:
    """Explain one image; returns the JSON path (overlay PNGs are written next to it)."""

    set_threads(cfg.threads)
    package_path = cfg.ref.resolve()
    methods = _methods(cfg.method, package_path)
    package = load_package(package_path)
    package.model.to(pick_device(cfg.device != "cpu"))  # check_local refused cuda without CUDA
    meta = package.metadata
    if cfg.target is not None and not 0 <= cfg.target < len(meta.class_names):
        raise ModelError(
            f"--target {cfg.target}: the model's classes are 0..{len(meta.class_names) - 1}"
        )
    if cfg.dataset:
        image, annotations = load_dataset_image(cfg.dataset, cfg.image_id)
        stem = f"image{cfg.image_id}"
    elif cfg.image:
        try:
            image, annotations = decode_image(Path(cfg.image).read_bytes()).image, None
        except ImageError as exc:  # one line naming the file, not a traceback
            raise ImageError(exc.reason, f"{cfg.image}: {exc.detail}") from None
        stem = re.sub(r"[^\w.-]+", "_", Path(cfg.image).stem) or "image"
    else:
        raise ValueError("give --image PATH, or --dataset DIR with --image-id N")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = {"steps": cfg.steps, "baseline": cfg.baseline, "nt_samples": cfg.nt_samples}
    kw["nt_stdev"] = cfg.nt_stdev
    profiles = load_part_profiles(package_path)
    report: dict[str, Any] = {
        "model": {"path": str(package_path), "arch": meta.arch, "version": meta.version},
        "image": {"source": cfg.image or f"{cfg.dataset}#{cfg.image_id}", "width": image.width,
                  "height": image.height},
        "annotations": None if annotations is None else
        {k: annotations[k] for k in ("label", "class_name", "bbox", "split")},
        "explanations": [],
    }  # fmt: skip
    for method in methods:
        exp = explain(
            package.model, meta.data_config, image, method, cfg.target,
            temperature=meta.temperature, **kw,
        )  # fmt: skip
        overlay = out / f"{stem}_{method}.png"
        regions = exp.regions(cfg.regions)
        overlay.write_bytes(exp.overlay_png(image, boxes=cfg.regions))
        entry = {**exp.summary(), "overlay": str(overlay), "regions": regions,
                 "predicted_species": meta.class_names[exp.predicted],
                 "target_species": meta.class_names[exp.target]}  # fmt: skip
        print(f"{method}: predicted {entry['predicted_species']} ({exp.confidence:.3f}); "
              f"explained {entry['target_species']}, {exp.seconds:.2f}s -> {overlay}")  # fmt: skip
        if annotations is not None and annotations["bbox"] is not None and annotations["parts"]:
            score = score_parts(exp.attribution, annotations["parts"], annotations["bbox"],
                                annotations["part_names"], cfg.radius)  # fmt: skip
            entry["parts"] = score.to_dict()
            _print_ranking("  part ranking (share of attribution near each visible part):",
                           score.ranking(), score.area_shares)  # fmt: skip
            print(f"  peak in bird box: {score.peak_in_bbox}; near a visible part: "
                  f"{score.peak_near_part} ({score.nearest_part})")  # fmt: skip
        else:
            profile = species_profile(profiles, exp.target)
            entry["part_profile"] = profile
            if profile:
                title = (f"  typical part profile of {entry['target_species']} "
                         f"({profiles['method']}, from explain-eval):")  # fmt: skip
                _print_ranking(title, list(profile.items())[:5], profiles.get("chance", {}))
            else:
                print("  no part annotations for this file and no species profile in the "
                      "package (run `birdray explain-eval` to make one)")  # fmt: skip
        report["explanations"].append(entry)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2))
    return path
