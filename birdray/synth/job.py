"""A generated dataset in CUB-200-2011's exact layout: every stage runs without the 1.1 GB archive.

Species are trait combinations (``synth_species``); each photo is drawn procedurally
(``synth_draw``) with the true pixel location of all 15 parts. Output is deterministic: every
photo's randomness comes from ``(seed, image id)`` alone, so the bytes do not depend on how many
processes drew them. The folder appears atomically: it is built under a hidden name and renamed
into place only when complete, and ``synthetic_species.json`` inside records the config, so a
second run with the same config returns the existing dataset instead of redrawing it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from birdray.config import field
from birdray.synth.photo import seeded_rng
from birdray.synth.species import (
    ATTRIBUTE_NAMES,
    COLORS,
    PAIR_TRAITS,
    PART_NAMES,
    TRAITS,
    Species,
    class_attribute_ids,
    make_species,
)
from birdray.synth.workers import DrawJob, draw_all

FORMAT_VERSION = 1
MARKER = "synthetic_species.json"
CERTAINTIES = ("not visible", "guessing", "probably", "definitely")
_SPLIT_STREAM, _GRAY_STREAM = 0x5E1F, 0x6AE7  # RNG streams independent of IMAGE_STREAM


@dataclass
class SynthConfig:
    out: str = field(
        "data/synth", "output folder; CUB_200_2011/ and attributes.txt are written inside"
    )
    classes: int = field(200, "number of species")
    per_class: int = field(59, "images per species (CUB has ~59)")
    seed: int = field(0, "random seed: the same seed and sizes give byte-identical files")
    workers: int = field(0, "processes; 0 = all cores (does not change the output)")
    min_side: int = field(300, "smallest image side in pixels")
    max_side: int = field(500, "largest image side in pixels (CUB photos are mostly 500 wide)")
    test_fraction: float = field(0.5, "share of each species' images in the test split (CUB: ~0.5)")


def _validate(cfg: SynthConfig) -> None:
    if not 1 <= cfg.classes <= 999:
        raise ValueError(f"classes must be 1..999 (3-digit CUB folder numbers), got {cfg.classes}")
    if cfg.per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {cfg.per_class}")
    if not 64 <= cfg.min_side <= cfg.max_side:
        raise ValueError(f"need 64 <= min_side <= max_side, got {cfg.min_side}, {cfg.max_side}")
    if not 0.0 <= cfg.test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {cfg.test_fraction}")


def _fingerprint(cfg: SynthConfig) -> dict:
    """What determines the bytes written (not where, nor how many processes)."""
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("out", "workers")}
    return {"format_version": FORMAT_VERSION, **keep}


# --- the dataset --------------------------------------------------------------------------------
def test_images(per_class: int, test_fraction: float) -> int:
    """Each species' official test images (59 -> 29 test, 30 train; CUB: ~5.8k/6k)."""
    n_test = int(per_class * test_fraction + 1e-9)
    if per_class >= 2 and 0 < test_fraction < 1:  # every species in both splits, as in CUB
        n_test = min(max(n_test, 1), per_class - 1)
    return n_test


def _plan(cfg: SynthConfig, species: list[Species]) -> tuple[list[DrawJob], list[int]]:
    """Image ids, file names, split and the few grayscale photos, all fixed before drawing."""
    jobs, is_train = [], []
    n_test = test_images(cfg.per_class, cfg.test_fraction)
    total = cfg.classes * cfg.per_class
    n_gray = min(total, max(2, total // 2000))
    gray = set(
        (seeded_rng(cfg.seed, _GRAY_STREAM).choice(total, n_gray, replace=False) + 1).tolist()
    )
    for index, sp in enumerate(species):
        split_rng = seeded_rng(cfg.seed, _SPLIT_STREAM, sp.class_id)
        test = set(split_rng.choice(cfg.per_class, n_test, replace=False).tolist())
        for n in range(cfg.per_class):
            image_id = len(jobs) + 1
            relpath = f"{sp.folder}/{sp.name}_{n + 1:04d}_{image_id}.jpg"
            jobs.append(DrawJob(image_id, index, relpath, image_id in gray))
            is_train.append(0 if n in test else 1)
    return jobs, is_train


def _write(path: Path, lines: list[str] | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = lines if isinstance(lines, str) else "\n".join(lines)
    path.write_text(text + "\n" if text else "")


def _species_json(cfg: SynthConfig, species: list[Species]) -> dict:
    return {
        "generator": "birdray.synth.job",
        "config": _fingerprint(cfg),
        "colors": COLORS,
        "pair_traits": list(PAIR_TRAITS),
        "trait_parts": {t: parts for t, (_, parts) in TRAITS.items()},
        "classes": [
            {
                "class_id": sp.class_id,
                "name": sp.folder,
                "traits": sp.traits,
                "attribute_ids": class_attribute_ids(sp.traits),
                "sibling": sp.sibling,
                "paired": sp.paired,
                "differing_traits": sp.differing_traits,
                "discriminative_parts": sp.discriminative_parts,
            }
            for sp in species
        ],
    }


def _build(cfg: SynthConfig, cub: Path) -> None:
    """Write the whole CUB_200_2011 tree into ``cub`` (a fresh folder)."""
    species = make_species(cfg.classes, cfg.seed)
    jobs, is_train = _plan(cfg, species)
    for sp in species:
        (cub / "images" / sp.folder).mkdir(parents=True, exist_ok=True)
    records = draw_all(
        cfg.workers, (cfg.seed, cfg.min_side, cfg.max_side), species, jobs, cub / "images"
    )
    ids = [job.image_id for job in jobs]
    _write(cub / "images.txt", [f"{i} {job.relpath}" for i, job in zip(ids, jobs, strict=True)])
    _write(cub / "classes.txt", [f"{sp.class_id} {sp.folder}" for sp in species])
    _write(
        cub / "image_class_labels.txt",
        [f"{j.image_id} {species[j.class_index].class_id}" for j in jobs],
    )
    _write(cub / "train_test_split.txt", [f"{i} {t}" for i, t in zip(ids, is_train, strict=True)])
    _write(
        cub / "bounding_boxes.txt", [f"{i} {r['bbox']}" for i, r in zip(ids, records, strict=True)]
    )
    _write(
        cub / "parts" / "parts.txt", [f"{k} {name}" for k, name in enumerate(PART_NAMES, start=1)]
    )
    _write(
        cub / "parts" / "part_locs.txt",
        [
            f"{i} {k} {loc}"
            for i, r in zip(ids, records, strict=True)
            for k, loc in enumerate(r["parts"], 1)
        ],
    )
    _write(cub / "parts" / "part_click_locs.txt", [line for r in records for line in r["clicks"]])
    _write(
        cub / "attributes" / "certainties.txt", [f"{k} {c}" for k, c in enumerate(CERTAINTIES, 1)]
    )
    _write(cub / "attributes" / "image_attribute_labels.txt", [r["attributes"] for r in records])
    present = np.zeros((len(species), len(ATTRIBUTE_NAMES)))
    for job, r in zip(jobs, records, strict=True):
        present[job.class_index] += r["present"]
    percent = 100.0 * present / cfg.per_class
    _write(
        cub / "attributes" / "class_attribute_labels_continuous.txt",
        [" ".join(f"{v:.12f}" for v in row) for row in percent],
    )
    _write(cub / MARKER, json.dumps(_species_json(cfg, species), indent=1))


def _previous_config(cub: Path) -> dict | None:
    try:
        data = json.loads((cub / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data.get("config") if data.get("generator") == "birdray.synth.job" else None


def generate(cfg: SynthConfig) -> Path:
    """Generate a synthetic CUB-200-2011 (images, labels, split, boxes, parts, attributes).

    Returns ``cfg.out``, the folder that contains ``CUB_200_2011/`` and ``attributes.txt``.
    An existing dataset made with the same config is returned as is; any other non-empty
    ``CUB_200_2011`` (real CUB, or another config) is never overwritten.
    """
    _validate(cfg)
    root = Path(cfg.out)
    cub = root / "CUB_200_2011"
    attributes_txt = [f"{k} {name}" for k, name in enumerate(ATTRIBUTE_NAMES, start=1)]
    if cub.exists() and any(cub.iterdir()):
        previous = _previous_config(cub)
        if previous is None:
            raise FileExistsError(
                f"{cub} exists and is not a birdray synthetic dataset; not touching it"
            )
        if previous != _fingerprint(cfg):
            raise FileExistsError(
                f"{cub} was generated with another config ({previous}); "
                "delete it or choose another --out"
            )
        if not (root / "attributes.txt").is_file():
            _write(root / "attributes.txt", attributes_txt)
        return root
    partial = root / ".CUB_200_2011.partial"
    shutil.rmtree(partial, ignore_errors=True)  # leftovers of an interrupted run
    partial.mkdir(parents=True)
    _build(cfg, partial)
    _write(root / "attributes.txt", attributes_txt)
    if cub.exists():
        cub.rmdir()  # empty, checked above
    partial.rename(cub)
    return root
