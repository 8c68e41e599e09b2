"""Explanations for the images the model was least sure about: the ones a person should look at.

After scoring, the N lowest-confidence scored files are explained with ``birdray.explain`` (one
Ray task, on a GPU when the job has one) and written as overlay PNGs plus an ``index.json`` that
maps each overlay back to its file, prediction and strongest regions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from birdray.images import decode_image
from birdray.scoring.output import read_rows, write_json
from birdray.scoring.sources import Source, read_many


def lowest_confidence(pred_dir: Path, n: int) -> list[dict[str, Any]]:
    rows = read_rows([pred_dir], ["path", "ok", "label", "species", "confidence"])
    rows = rows.filter(rows["ok"])
    order = pc.sort_indices(rows, sort_keys=[("confidence", "ascending"), ("path", "ascending")])
    return rows.take(order[:n]).to_pylist()


def _explain_files(
    package: dict[str, Any],
    source: Source,
    items: list[dict[str, Any]],
    method: str,
    max_pixels: int,
) -> list[dict[str, Any]]:
    """Ray task: explain each item for its predicted label; failures are reported, not raised."""
    import ray

    from birdray.explain import explain
    from birdray.model.package import load_package_files

    loaded = load_package_files(ray.get(package["ref"]), package["name"], verified=True)
    data = read_many(source, [item["path"] for item in items])
    out = []
    for item in items:
        try:
            image = decode_image(data[item["path"]], max_pixels).image
            exp = explain(
                loaded.model,
                loaded.metadata.data_config,
                image,
                method=method,
                target=item["label"],
                temperature=loaded.metadata.temperature,
            )
            out.append({**item, "png": exp.overlay_png(image), "regions": exp.regions(3)})
        except Exception as exc:  # one failed overlay must not cost the finished scoring run
            out.append({**item, "error": f"{type(exc).__name__}: {exc}"})
    return out


def _file_name(rank: int, path: str) -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(path).stem)[:80] or "image"
    return f"{rank:03d}-{stem}.png"


def write_explanations(
    pred_dir: Path,
    dest: Path,
    source: Source,
    package: dict[str, Any],
    n: int,
    method: str,
    max_pixels: int,
    num_gpus: float,
) -> dict[str, Any]:
    """Overlay PNGs + index.json for the ``n`` lowest-confidence rows; returns a small report."""
    import ray

    items = lowest_confidence(pred_dir, n)
    if not items:
        return {"method": method, "written": 0, "failed": 0}
    task = ray.remote(_explain_files).options(num_cpus=1, num_gpus=num_gpus or None)
    results = ray.get(task.remote(package, source, items, method, max_pixels))
    dest.mkdir(parents=True, exist_ok=True)
    index = []
    for rank, result in enumerate(results):
        png = result.pop("png", None)
        if png is not None:
            result["overlay"] = _file_name(rank, result["path"])
            (dest / result["overlay"]).write_bytes(png)
        index.append(result)
    write_json(dest / "index.json", {"method": method, "items": index})
    written = sum(1 for r in index if "overlay" in r)
    return {"method": method, "written": written, "failed": len(index) - written}
