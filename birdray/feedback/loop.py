"""The feedback loop once, end to end: people correct the served model, the next model learns it.

``send_answers`` plays the people: each new photo goes to ``POST /v1/predict`` and its true
species to ``POST /v1/feedback`` (a confirmation when the model was right, a correction when
not). ``learn_from_feedback`` merges the answers into a new dataset version (``ingest
--feedback``: extra train rows only), fine-tunes the served model on it (``--init-from``, head
kept), registers the result (with the feedback it learnt from) and measures what changed: the
corrected photos, and the official test split, which must not get worse.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import requests

from birdray.data.manifest import load_manifest


def send_answers(url: str, photos: list[tuple[Path, str]], timeout: float = 60) -> dict[str, Any]:
    """Predict each photo over HTTP and answer with its true species; returns what was sent."""
    wrong, right = [], []
    for path, truth in photos:
        data = path.read_bytes()
        reply = requests.post(
            f"{url}/v1/predict?top_k=1",
            files={"files": (path.name, data, "image/jpeg")},
            timeout=timeout,
        )
        reply.raise_for_status()
        body = reply.json()
        predicted, version = body["results"][0]["prediction"]["species"], body["model"]["version"]
        answer = requests.post(
            f"{url}/v1/feedback",
            files={"file": (path.name, data, "image/jpeg")},
            data={"predicted": predicted, "model_version": version, "species": truth},
            timeout=timeout,
        )
        answer.raise_for_status()
        (right if predicted == truth else wrong).append((path, truth))
    return {"sent": len(photos), "right": right, "wrong": wrong}


def _accuracy(package: Path, photos: list[tuple[Path, str]]) -> float:
    from birdray.model.crop import decode_for_model
    from birdray.model.inference import Predictor

    if not photos:
        return float("nan")
    predictor = Predictor(str(package), device="cpu")
    data_config = predictor.metadata.data_config
    images = [decode_for_model(path.read_bytes(), data_config).image for path, _ in photos]
    predictions = predictor.predict_images(images)
    hits = [p.species == truth for p, (_, truth) in zip(predictions, photos, strict=True)]
    return sum(hits) / len(photos)


def learn_from_feedback(
    recipe: Any,
    source: Path,
    feedback: str,
    registry: str,
    out: Path,
    corrected: list[tuple[Path, str]],
    epochs: int = 2,
) -> dict[str, Any]:
    """Ingest with the feedback, fine-tune production on it, compare before and after."""
    from birdray.data.ingest import IngestConfig, run_ingest
    from birdray.evaluate.job import EvaluateConfig, run_evaluation
    from birdray.model.package import read_metadata
    from birdray.registry.ref import ModelRef
    from birdray.train.job import run_training

    served = ModelRef("production", registry).pinned()
    before_pkg = served.resolve()
    meta = read_metadata(before_pkg)
    dataset = out / "dataset_feedback"
    run_ingest(IngestConfig(source=str(source), out=str(dataset), val_fraction=0.2,
                            seed=recipe.seed, feedback=feedback))  # fmt: skip
    added = load_manifest(dataset)["feedback"]
    tuned = dataclasses.replace(
        recipe,
        dataset=str(dataset),
        arch=meta.arch,  # production may be the sweep's winner, not the recipe's arch
        image_size=meta.image_size,
        pretrained=False,
        pretrained_file="",
        init_from=str(before_pkg),
        epochs=epochs,
        warmup_epochs=0,
        lr=recipe.lr * 0.2,  # a short, gentle fine-tune of a model that already works
        name=f"{recipe.name}-feedback",
        registry=registry,
    )
    trained = run_training(tuned)
    after = run_evaluation(EvaluateConfig(model=trained["package"], dataset=str(dataset)))
    # evaluation writes its calibration into the package it is given: use a copy, never the
    # registry's cached version
    before_copy = out / "served_package"
    shutil.rmtree(before_copy, ignore_errors=True)
    shutil.copytree(before_pkg, before_copy)
    before = run_evaluation(EvaluateConfig(model=str(before_copy), dataset=str(dataset)))
    return {
        "served_version": served.model,
        "feedback_rows": added.get("used", 0),
        "registered": trained.get("registered_version"),
        "package": trained["package"],
        "corrected_right_before": _accuracy(before_pkg, corrected),
        "corrected_right_after": _accuracy(Path(trained["package"]), corrected),
        "test_top1_before": before["test_top1"],
        "test_top1_after": after["test_top1"],
    }
