"""``birdray explain-eval``: do the model's explanations point at the bird, and are they faithful?

The test split is explained in parallel by a Ray Data actor pool, each actor holding the package's
model once. Per method it measures, always against chance:

* pointing game: is the map's peak inside the bird's box / near a visible part
  (chance: the box's / the parts' share of the image);
* part shares: attribution mass near each part vs the part's area share, overall and per species
  (the per-species profile is what Serve shows for uploads, which have no annotations);
* deletion curve: accuracy as the most-attributed pixels are removed first, vs removed at random
  (descriptive only: scattered pixels destroy an image faster than a region, so this is no test);
* faithfulness tests with pass/fail (``faithfulness.py``): MoRF vs LeRF and MoRF vs random
  regions on grid cells with ROAD imputation, and the model-randomisation sanity check, each with
  a bootstrap CI over about ``--faith-images`` images.

A dataset without part annotations (one's own photos: ``birdray.data.folders``) gets the
deletion curves only; the pointing game and part shares are skipped and said to be.

Results go into the package folder (``explain/``) so Serve and the dashboard find them with the
model they describe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from birdray.config import field
from birdray.data.manifest import load_manifest, read_split
from birdray.explain.attribution import METHODS, explain
from birdray.explain.compare import compare_methods
from birdray.explain.contrastive import run_contrastive
from birdray.explain.faithfulness import (
    randomize_top,
    rank_correlation,
    removal_curves,
)  # fmt: skip
from birdray.explain.locate import feature_map, fit_and_measure, part_features
from birdray.explain.results import BEST, headline, record, write_results
from birdray.explain.scores import deletion_curves, part_scores, summarize_method
from birdray.images import decode_image
from birdray.model.factory import pick_device, set_threads
from birdray.model.package import load_package_files, package_files, read_metadata
from birdray.model.preprocess import build_transform
from birdray.registry.ref import ModelChoice
from birdray.resources import plan_pool
from birdray.runtime import init_ray


@dataclass
class ExplainEvalConfig(ModelChoice):
    dataset: str = field("data/cub_parquet", "ingested dataset (without parts: curves only)")
    split: str = field("test", "split to explain")
    methods: str = field(",".join(METHODS), "comma-separated methods to evaluate")
    target: str = field("label", "explain the true 'label' or the 'predicted' class")
    limit: int = field(0, "explain at most this many images (0 = the whole split)")
    radius: float = field(0.1, "part radius, relative to sqrt(bbox w * h)")
    steps: int = field(32, "Integrated Gradients steps")
    baseline: str = field("blur", "Integrated Gradients baseline: blur | black | white | mean")
    nt_samples: int = field(8, "SmoothGrad noisy samples")
    nt_stdev: float = field(0.15, "SmoothGrad noise, as a fraction of the input range")
    fractions: str = field("0,0.05,0.1,0.2,0.3,0.5,0.75", "deletion curve: fractions removed")
    profile_method: str = field(
        BEST,
        "method whose per-species profile Serve shows (best: the "
        "measured default, see explain/methods.md)",
    )
    actors: int = field(1, "model replicas explaining in parallel")
    actor_cpus: float = field(0.5, "CPUs reserved per actor (fractional keeps reads running)")
    num_gpus: float = field(0.0, "GPUs per actor")
    threads: int = field(2, "torch threads per actor (Ray sets 1)")
    batch_size: int = field(4, "images per actor call")
    seed: int = field(0, "seed of the random-removal order")
    faith_images: int = field(100, "about this many images get the faithfulness tests (CIs)")
    cells: int = field(8, "faithfulness tests remove cells of a CELLS x CELLS grid")
    regions: int = field(2, "random contiguous regions per image (the MoRF baseline)")
    sanity: bool = field(True, "model-randomisation check: explain a top-re-initialised copy too")
    contrast_images: int = field(60, "sibling-pair images for the contrastive table (0 = all)")
    siblings: str = field("", "synthetic_species.json (default: the dataset's generated source)")
    address: str = field("", "Ray address (empty: join RAY_ADDRESS or start a local Ray)")


class ExplainWorker:
    """Ray Data actor: the package's model loaded once; explains and scores a batch of images."""

    def __init__(self, files: dict[str, bytes], part_names: list[str], cfg: dict[str, Any]):

        set_threads(cfg["threads"])
        self.package = load_package_files(files, verified=True)  # package_files checked
        self.device = pick_device(cfg["num_gpus"] > 0)
        self.model = self.package.model.to(self.device).eval()
        self.data_config = self.package.metadata.data_config
        self.transform = build_transform(self.data_config, training=False)
        self.part_names, self.cfg = part_names, cfg
        self.kw = {k: cfg[k] for k in ("steps", "baseline", "nt_samples", "nt_stdev")}
        size = tuple(self.data_config["input_size"])
        self.random_model = randomize_top(self.model, size, cfg["seed"]) if cfg["sanity"] else None

    def _faithfulness(self, image, x, exp, rng: np.random.Generator) -> dict[str, Any]:
        """Removal curves of the explained class, and the map of the randomised model."""
        c = self.cfg
        out: dict[str, Any] = removal_curves(
            self.model, x, exp.input_attribution, exp.target, c["fractions"], c["cells"], rng,
            c["regions"],
        )  # fmt: skip
        out["sanity_rho"] = np.nan
        if self.random_model is not None:
            rand = explain(self.random_model, self.data_config, image, exp.method, exp.target,
                           **self.kw)  # fmt: skip
            out["sanity_rho"] = rank_correlation(exp.input_attribution, rand.input_attribution)
        return out

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:

        rows = []
        for rec in batch.itertuples(index=False):
            image = decode_image(bytes(rec.image)).image
            annotated = bool(self.part_names) and rec.bbox is not None
            parts = list(rec.parts) if annotated else []
            bbox = [float(v) for v in rec.bbox] if annotated else []
            x = self.transform(image).unsqueeze(0).to(self.device)
            rng = np.random.default_rng([self.cfg["seed"], int(rec.image_id)])
            tested = rng.random() < self.cfg["faith_p"]
            located = []  # the features under each annotated part: the part locator's samples
            if annotated:
                feats, geometry = feature_map(self.model, self.data_config, image)
                located = part_features(feats, geometry, parts).ravel().tolist()
            for i, method in enumerate(self.cfg["methods"]):
                target = int(rec.label) if self.cfg["target"] == "label" else None
                exp = explain(self.model, self.data_config, image, method, target, **self.kw)
                curves = deletion_curves(
                    self.model, x, exp.input_attribution, int(rec.label), self.cfg["fractions"], rng
                )
                faith = (self._faithfulness(image, x, exp, rng) if tested else
                         {"morf_prob": [], "lerf_prob": [], "region_prob": [],
                          "sanity_rho": np.nan})  # fmt: skip
                rows.append({
                    "image_id": int(rec.image_id), "label": int(rec.label), "method": method,
                    "predicted": exp.predicted, "seconds": exp.seconds, **curves, **faith,
                    **part_scores(exp.attribution, parts, bbox, self.part_names, self.cfg),
                    "part_features": located if i == 0 else [],
                })  # fmt: skip
        return pd.DataFrame(rows)


def run_explain_eval(cfg: ExplainEvalConfig) -> dict[str, Any]:
    """Explain the test split with every method; store the scores with the model package."""
    import ray

    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    fractions = sorted(float(f) for f in cfg.fractions.split(",") if f.strip())
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if cfg.target not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {cfg.target!r}")
    started = time.time()
    ref = cfg.ref.pinned()  # an alias is looked up once, up front
    version = ref.model if ref.registry else None  # immutable: results become a record beside it
    package = ref.resolve()
    meta = read_metadata(package)
    manifest = load_manifest(cfg.dataset)
    part_names = manifest.get("part_names") or []
    if not part_names:
        print(f"{cfg.dataset}: this dataset has no part annotations: part scores skipped")
    cluster = init_ray(cfg.address or None)
    actors = plan_pool("explanation", cfg.actors, cfg.actor_cpus, cfg.num_gpus, cluster)
    columns = ["image_id", "image", "label", "bbox", "parts"]
    ds = read_split(cfg.dataset, cfg.split, columns, list_once=True)  # no listing task first
    total = int(manifest["splits"].get(cfg.split, {}).get("rows", 0))  # ingest counted them
    if cfg.limit > 0:
        ds, total = ds.limit(cfg.limit), min(total, cfg.limit)
    worker_cfg = {
        "methods": methods, "target": cfg.target, "radius": cfg.radius, "steps": cfg.steps,
        "baseline": cfg.baseline, "nt_samples": cfg.nt_samples, "nt_stdev": cfg.nt_stdev,
        "fractions": fractions, "seed": cfg.seed, "threads": cfg.threads,
        "num_gpus": cfg.num_gpus, "cells": cfg.cells, "regions": cfg.regions,
        "sanity": cfg.sanity, "faith_p": min(1.0, cfg.faith_images / max(total, 1)),
    }  # fmt: skip
    files = package_files(package)  # actors on other nodes cannot read the driver's folder
    rows = ds.map_batches(
        ExplainWorker,
        fn_constructor_kwargs={"files": files, "part_names": part_names, "cfg": worker_cfg},
        batch_size=cfg.batch_size, batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cfg.actor_cpus, num_gpus=cfg.num_gpus or None,
    ).to_pandas()  # fmt: skip
    if rows.empty:
        raise ValueError(f"split {cfg.split!r} of {cfg.dataset} has no images to explain")
    summary = {
        "model_version": meta.version or meta.content_hash[:12], "arch": meta.arch,
        "dataset": str(cfg.dataset), "split": cfg.split, "target": cfg.target,
        "radius": cfg.radius, "part_names": part_names, "class_names": meta.class_names,
        "settings": worker_cfg, "images": int(rows["image_id"].nunique()),
        "methods": {m: summarize_method(rows[rows["method"] == m], part_names, fractions,
                                        worker_cfg) for m in methods},
    }  # fmt: skip
    if part_names:  # sibling ground truth and the part locator need part annotations
        summary["part_locator"] = fit_and_measure(
            rows, cfg.dataset, cfg.split, files, part_names, cfg.radius, worker_cfg
        )
        pool = {"actors": actors, "actor_cpus": cfg.actor_cpus, "batch_size": cfg.batch_size}
        summary["contrastive"] = run_contrastive(
            cfg.dataset, cfg.split, load_manifest(cfg.dataset), files, {**worker_cfg, **pool},
            cfg.siblings, cfg.contrast_images,
        )  # fmt: skip
    else:
        summary["contrastive"] = {"available": False, "reason": "no part annotations"}
    summary["comparison"] = compare_methods(summary)
    summary["seconds"] = round(time.time() - started, 2)
    if version:
        return {**record(cfg.registry, version, summary, cfg.profile_method), **headline(summary)}
    files = write_results(package, summary, cfg.profile_method)
    return {"package": str(package), "files": files, **headline(summary)}
