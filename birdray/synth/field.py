"""New photos of a generated dataset's species: what users would upload after it was trained.

Same species (traits from the same seed), drawn with image keys the dataset never uses, so none
of them is a copy of a training, validation or test photo. The demo's feedback loop sends them
to Serve and corrects its mistakes.
"""

from __future__ import annotations

from pathlib import Path

from birdray.synth.draw import render
from birdray.synth.job import SynthConfig
from birdray.synth.photo import IMAGE_STREAM, image_size, seeded_rng
from birdray.synth.species import make_species

FIELD_KEY = 1_000_000_000  # above every image id a dataset has


def field_photos(cfg: SynthConfig, out: Path, per_class: int) -> list[tuple[Path, str]]:
    """``per_class`` new JPEGs per species of the dataset ``cfg`` made: (path, class name)."""
    photos = []
    for sp in make_species(cfg.classes, cfg.seed):
        folder = out / sp.folder
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            rng = seeded_rng(cfg.seed, IMAGE_STREAM, FIELD_KEY + sp.class_id * 10_000 + n)
            width, height = image_size(rng, cfg.min_side, cfg.max_side)
            path = folder / f"field_{n + 1:03d}.jpg"
            render(sp.traits, rng, width, height).image.save(path, format="JPEG", quality=90)
            photos.append((path, sp.folder))
    return photos
