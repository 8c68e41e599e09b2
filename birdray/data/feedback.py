"""People's labelled feedback (``birdray.feedback.store``) as extra training rows of a new dataset.

Only answers that name a species become rows, and only in ``train``: val and test stay the
official splits, so a model trained with feedback is still measured on the same photos as before.
A photo whose bytes are already in the dataset is not added again (one that is a val or test photo
would leak evaluation data into training). The species must be one of the dataset's classes, in
the dataset's spelling or the part after the number, any case where that names one class (how
Serve accepts it: ``birdray.class_names``); an ambiguous answer is skipped and counted. A
``not_a_bird``/``unsure`` answer is told apart from a class of that name by the row's verdict, as
Serve stored it. The rows go through the same decoder and quarantine as the source's images.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import PurePosixPath
from typing import Any

from birdray.class_names import ClassIndex
from birdray.feedback.store import is_reserved, read_feedback

LABELLED = ("confirmed", "corrected")


def class_index(class_names: list[str]) -> ClassIndex:
    """Every spelling an answer may use -> the class's label (``birdray.class_names``: names
    that differ only by case are matched exactly, ambiguous spellings left out)."""
    return ClassIndex.of(class_names)


def source_digest(location: str) -> str:
    """Changes when the feedback does (a new answer, a changed one): ingest is no longer current."""
    return _digest(read_feedback(location))


def _digest(table) -> str:
    pairs = sorted(zip(table["sha256"].to_pylist(), table["answer"].to_pylist(), strict=True))
    return hashlib.sha256("\n".join(f"{h} {a}" for h, a in pairs).encode()).hexdigest()


def feedback_items(
    location: str,
    class_names: list[str],
    first_id: int,
    known: dict[str, str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ingest items (``rows.ITEM_SCHEMA``, bytes included) for the labelled feedback, and the
    manifest's ``feedback`` entry without the ingest's outcome (``finish`` adds it).

    ``known``: content hash -> split of every source image, so duplicates are skipped.
    """
    table = read_feedback(location)
    labels = class_index(class_names)
    skipped: Counter[str] = Counter()
    items, used = [], []
    for row in table.to_pylist():
        answer = (row["answer"] or "").strip()
        if is_reserved(row["verdict"], answer):  # not a class named so: the verdict says
            skipped[row["verdict"] or answer] += 1
            continue
        label = labels.get(answer)
        if label is None:  # several classes differ from it only by case: never guess one
            skipped["ambiguous_species" if labels.could_mean(answer) else "unknown_species"] += 1
            continue
        if row["sha256"] in known:
            skipped[f"already_in_{known[row['sha256']]}"] += 1
            continue
        image_id = first_id + len(items)
        items.append(
            {
                "image_id": image_id,
                "path": f"feedback/{row['sha256']}/{_name(row['file'])}",
                "label": label,
                "class_name": class_names[label],
                "split": "train",
                "bbox": None,
                "parts": [],
                "attributes": [],
                "problems": "",
                "data": row["image"],
            }
        )
        used.append(
            {
                "image_id": image_id,
                "sha256": row["sha256"],
                "class_name": class_names[label],
                "predicted": row["predicted"],
                "verdict": row["verdict"],
                "model_version": row["model_version"],
            }
        )
    entry = {
        "location": location,
        "source_digest": _digest(table),
        "rows": table.num_rows,
        "labelled": len(items),
        "skipped": dict(sorted(skipped.items())),
        "rows_used": used,
    }
    return items, entry


def _name(file: str | None) -> str:
    """The sender's file name without any folder in it: a label, never opened."""
    name = PurePosixPath((file or "").replace("\\", "/")).name
    return name if name not in ("", ".", "..") else "image"  # '..' would name the folder above


def finish(entry: dict[str, Any], quarantine: list[dict[str, Any]]) -> dict[str, Any]:
    """The entry once the shards are written: quarantined rows out, counts and digest in."""
    rejected = {q["image_id"] for q in quarantine}
    used = [r for r in entry["rows_used"] if r["image_id"] not in rejected]
    hashes = sorted(r["sha256"] for r in used)
    return {
        **entry,
        "used": len(used),
        "quarantined": len(entry["rows_used"]) - len(used),
        "rows_used": used,
        "digest": hashlib.sha256("\n".join(hashes).encode()).hexdigest(),
    }


def training_record(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What a model trained on this dataset records about the feedback in it (None: none)."""
    entry = manifest.get("feedback")
    if not entry:
        return None
    return {
        "count": entry["used"],
        "digest": entry["digest"],
        "source_digest": entry["source_digest"],
        "sha256": sorted(r["sha256"] for r in entry["rows_used"]),
    }
