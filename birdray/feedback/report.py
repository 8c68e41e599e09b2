"""``birdray feedback report``: per species, how often people corrected the model.

    birdray feedback report --feedback runs/registry/feedback --out report.json
    birdray feedback report --registry runs/registry --model production

A correction is a labelled answer (a species was given) that differs from what the model said.
Per species (the one people gave), the report counts answers, corrections and the species the
model said instead. With ``--model``, it also measures that model on the corrected photos it was
not trained with (a model trained with feedback records which photos it saw): whether the
corrections taught it something beyond the photos themselves.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from birdray import storage
from birdray.class_names import ClassIndex
from birdray.config import ConfigError, field
from birdray.feedback.store import NOT_A_BIRD, UNSURE, is_reserved, read_feedback
from birdray.images import ImageError
from birdray.registry.ref import MODEL_HELP, ModelRef

ACTIONS = ("report",)


@dataclass
class FeedbackConfig:
    positional = "action"
    action: str = field("report", "report: per-species corrections of the feedback dataset")
    feedback: str = field("", "feedback folder or URI (empty: <registry>/feedback)")
    registry: str = field("", "registry folder or URI (where --model is a version; feedback)")
    model: str = field(
        "", f"also measure this model on corrected photos it was not trained on ({MODEL_HELP})"
    )
    out: str = field("", "also write the report as JSON to this file or URI")

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"action: {self.action!r} is not one of {', '.join(ACTIONS)}")
        if not (self.feedback or self.registry):
            raise ConfigError("--feedback is required (or --registry, to read <registry>/feedback)")


def species_report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per given species; ``rows`` are feedback rows (one per image)."""
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"answers": 0, "corrected": 0})
    instead: dict[str, Counter[str]] = defaultdict(Counter)
    other: Counter[str] = Counter()
    for row in rows:
        answer = row["answer"]
        if is_reserved(row.get("verdict"), answer):  # not a class named "unsure"
            other[answer] += 1
            continue
        per[answer]["answers"] += 1
        if row["predicted"] != answer:
            per[answer]["corrected"] += 1
            instead[answer][row["predicted"]] += 1
    species = {
        name: {
            **counts,
            "correction_rate": round(counts["corrected"] / counts["answers"], 4),
            "predicted_instead": dict(instead[name].most_common()),
        }
        for name, counts in sorted(per.items(), key=lambda kv: (-kv[1]["corrected"], kv[0]))
    }
    labelled = sum(c["answers"] for c in per.values())
    corrected = sum(c["corrected"] for c in per.values())
    return {
        "rows": len(rows),
        "labelled": labelled,
        "corrected": corrected,
        "correction_rate": round(corrected / labelled, 4) if labelled else None,
        "not_a_bird": other[NOT_A_BIRD],
        "unsure": other[UNSURE],
        "species": species,
    }


def unseen_accuracy(rows: list[dict[str, Any]], model: str, registry: str) -> dict[str, Any]:
    """The model's top-1 accuracy on corrected photos whose hash is not in its training record."""
    from birdray.model.crop import decode_for_model
    from birdray.model.inference import Predictor

    predictor = Predictor(str(ModelRef(model, registry).resolve()), device="cpu")
    meta = predictor.metadata
    seen = set((meta.dataset.get("feedback") or {}).get("sha256", []))
    classes = ClassIndex.of(meta.class_names)  # names differing only by case: exact only
    corrected = [r for r in rows if r["verdict"] == "corrected" and r["answer"] in classes]
    photos = [r for r in corrected if r["sha256"] not in seen]
    right, unreadable = 0, 0
    for row in photos:
        try:
            image = decode_for_model(row["image"], meta.data_config).image
        except ImageError:
            unreadable += 1
            continue
        got = predictor.predict_images([image], top_k=1)[0].species
        right += got == meta.class_names[classes[row["answer"]]]
    photos_read = len(photos) - unreadable
    return {
        "model": predictor.version,
        "trained_with_feedback": len(seen),  # every feedback photo it learnt from, any verdict
        "corrected_trained": len(corrected) - len(photos),  # left out of the measurement
        "corrected_unseen": photos_read,
        "unreadable": unreadable,
        "right": right,
        "accuracy": round(right / photos_read, 4) if photos_read else None,
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'species':<40} {'answers':>7} {'corrected':>9} {'rate':>6}  predicted instead"]
    for name, s in report["species"].items():
        top = ", ".join(f"{k} ({v})" for k, v in list(s["predicted_instead"].items())[:3])
        lines.append(
            f"{name[:40]:<40} {s['answers']:>7} {s['corrected']:>9} "
            f"{s['correction_rate']:>6.0%}  {top}"
        )
    lines.append(
        f"{report['labelled']} labelled answers, {report['corrected']} corrections; "
        f"{report['not_a_bird']} not a bird, {report['unsure']} unsure"
    )
    unseen = report.get("unseen")
    if unseen:
        acc = "n/a" if unseen["accuracy"] is None else f"{unseen['accuracy']:.0%}"
        lines.append(
            f"model {unseen['model']}: {acc} right on {unseen['corrected_unseen']} corrected "
            f"photos it was not trained on ({unseen['corrected_trained']} corrected photos it "
            f"was trained on left out; it learnt from {unseen['trained_with_feedback']} feedback "
            "photos in all)"
        )
    return "\n".join(lines)


def run_feedback(cfg: FeedbackConfig) -> None:
    """Report on the feedback dataset: per species, how often people corrected the model."""
    location = cfg.feedback or storage.join(cfg.registry, "feedback")
    rows = read_feedback(location).to_pylist()
    report = {"feedback": storage.absolute(location), **species_report(rows)}
    if cfg.model:
        report["unseen"] = unseen_accuracy(rows, cfg.model, cfg.registry)
    print(format_table(report))
    if cfg.out:
        dest = storage.absolute(cfg.out)
        storage.write_bytes_atomic(dest, json.dumps(report, indent=2).encode())
        print(f"written: {dest}")
