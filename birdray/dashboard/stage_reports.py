"""Readers for what the other stages leave on disk: scoring outputs, Tune reports, the registry.

Every reader takes a folder and returns plain data (DataFrames, dicts, PNG paths) or ``None``
when the thing is not there yet, so pages can say so instead of failing. Results are cached for
a short time: folders change while jobs run, and a finished result never changes afterwards.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import streamlit as st

from birdray import storage
from birdray.images import ImageError, decode_image

SUCCESS, PREDICTIONS, SUMMARY, EXPLANATIONS = (
    "_SUCCESS",
    "predictions",
    "summary.json",
    "explanations",
)
TUNE_FILES = {"trials": "trials.csv", "curves": "curves.csv", "summary": "summary.json"}
TUNE_PNGS = ("val_top1_curves.png", "best_val_top1_by_arch.png")
EVAL_PNGS = ("confusion_matrix.png", "reliability.png", "train_val_losses.png")
THUMBNAIL_MAX_BYTES = 50 * 2**20  # scoring's default --max-file-mb: a bigger file was never scored


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


# --- batch scoring -------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, ttl=15)
def scoring_results(output: str) -> dict[str, Any]:
    """``{"state": "missing" | "running" | "foreign" | "unreadable" | "finished", "rows", ...}``.

    Only an output with birdray's ``_SUCCESS`` is read: without it the folder may hold a
    half-written run. A bucket output (``s3://...``) is read from a local copy of its finished
    result. "unreadable" comes with ``why`` (a ``_SUCCESS`` this user may not read).
    """

    from birdray.scoring.output import is_result, read_marker, unreadable_marker
    from birdray.scoring.remote import mirror_of, pull_state

    if storage.is_remote(output):
        uri = output.rstrip("/")
        root = mirror_of(uri, reader="dashboard")  # never the job's own working mirror
        try:
            state = pull_state(uri, root)
        except OSError as exc:  # a _SUCCESS this user may not read (403), a bucket gone
            return {"state": "unreadable", "why": f"{uri} cannot be read: {exc}"}
        if state == "foreign":  # Spark's _SUCCESS, as for a folder
            return {"state": "foreign"}
        if state != "finished":
            exists = storage.file_type(uri) != pafs.FileType.NotFound
            return {"state": "running" if exists else "missing"}
    else:
        root = storage.local_path(output)
    if not root.is_dir():
        return {"state": "missing"}
    try:
        mark = read_marker(root)
    except OSError as exc:
        return {"state": "unreadable", "why": unreadable_marker(root, exc)}
    if mark is None:
        return {"state": "running"}
    if not is_result(mark):  # Spark's or Hadoop's empty _SUCCESS: another tool's files
        return {"state": "foreign"}
    rows = pd.read_parquet(root / PREDICTIONS)
    rows["top_k"] = rows["top_k"].map(_top_k_text)
    index = _json(root / EXPLANATIONS / "index.json") or {}
    overlays = {
        item["path"]: str(root / EXPLANATIONS / item["overlay"])
        for item in index.get("items", [])
        if item.get("overlay") and (root / EXPLANATIONS / item["overlay"]).is_file()
    }
    keep = [
        "path",
        "ok",
        "species",
        "confidence",
        "error",
        "top_k",
        "model_version",
        "width",
        "height",
        "label",
    ]
    return {
        "state": "finished",
        "rows": rows[[c for c in keep if c in rows.columns]].reset_index(drop=True),
        "summary": _json(root / SUMMARY) or {},
        "overlays": overlays,
        "method": index.get("method"),
    }


def _top_k_text(top_k: Any) -> str:
    if top_k is None or len(top_k) == 0:
        return ""
    return "; ".join(f"{t['species']} {t['probability']:.1%}" for t in top_k)


def filter_rows(
    rows: pd.DataFrame, species: list[str], below: float | None, show: str
) -> pd.DataFrame:
    """Rows matching the Batch page's filters (``show``: all | scored | errors)."""
    out = rows
    if show == "errors":
        out = out[~out["ok"]]
    elif show == "scored":
        out = out[out["ok"]]
    if species:
        out = out[out["species"].isin(species)]
    if below is not None:
        out = out[out["ok"] & (out["confidence"] < below)]
    return out


@st.cache_data(show_spinner=False, max_entries=256)
def thumbnail(path: str, size: int = 256) -> bytes | None:
    """A small PNG of a local image (None when the dashboard cannot read it, e.g. s3://)."""

    if storage.is_remote(path):
        return None
    try:  # the one decoder: the thumbnail shows what the model saw (EXIF turn, 16-bit, alpha)
        data = storage.read_local_file(storage.local_path(path), THUMBNAIL_MAX_BYTES)
        img = decode_image(data).image
    except (OSError, ImageError):  # changed or gone since it was scored
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --- Tune ----------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, ttl=30)
def find_sweeps(folder: str) -> list[str]:
    """Report folders under ``folder``: itself, ``<folder>/report``, or ``<folder>/*/report``."""
    root = Path(folder).expanduser()
    candidates = [root, root / "report", *sorted(root.glob("*/report"))] if root.is_dir() else []
    return [str(p) for p in candidates if (p / TUNE_FILES["trials"]).is_file()]


@st.cache_data(show_spinner=False, ttl=30)
def tune_report(report_dir: str) -> dict[str, Any]:
    root = Path(report_dir)
    curves = root / TUNE_FILES["curves"]
    return {
        "trials": pd.read_csv(root / TUNE_FILES["trials"]),
        "curves": pd.read_csv(curves) if curves.is_file() and curves.stat().st_size else None,
        "summary": _json(root / TUNE_FILES["summary"]),
        "pngs": [str(root / n) for n in TUNE_PNGS if (root / n).is_file()],
    }


# --- registry and the production model's reports -------------------------------------------------


@st.cache_data(show_spinner=False, ttl=15)
def registry_versions(registry: str) -> dict[str, Any]:
    """Every version with its headline numbers, and the ``production`` pointer."""
    from birdray.registry import list_versions, read_pointer, version_metadata

    pointer = read_pointer(registry)
    rows = []
    for version in list_versions(registry):
        try:
            meta = version_metadata(registry, version)  # metadata only: no weights downloaded
        except Exception as exc:  # a broken entry is listed as broken, not hidden
            rows.append({"version": version, "problem": str(exc)[:600]})  # paths are long
            continue
        rows.append(
            {
                "version": version,
                "production": version == pointer.get("version"),
                "arch": meta.arch,
                "classes": meta.num_classes,
                "test_top1": meta.metrics.get("test_top1"),
                "test_top5": meta.metrics.get("test_top5"),
                "val_top1": meta.metrics.get("val_top1"),
                "ece_after": meta.metrics.get("ece_after"),
                "temperature": meta.temperature,
                "created": pd.Timestamp(meta.created_at, unit="s").strftime("%Y-%m-%d %H:%M"),
                "source": meta.provenance.get("sweep") or meta.provenance.get("run") or meta.run_id,
            }
        )
    return {"rows": rows, "pointer": pointer}


@st.cache_data(show_spinner=False, ttl=15)
def model_report(registry: str, version: str) -> dict[str, Any]:
    """The version's metadata, evaluation report and explainability results (what exists)."""
    from birdray.model.package import read_metadata
    from birdray.registry import local_copy

    path = local_copy(registry, version)
    meta = read_metadata(path)
    eval_dir, explain_dir = path / "eval", path / "explain"
    explain_pngs = sorted(str(p) for p in explain_dir.glob("*.png")) if explain_dir.is_dir() else []
    return {
        "path": str(path),
        "arch": meta.arch,
        "class_names": meta.class_names,
        "temperature": meta.temperature,
        "metrics": _json(eval_dir / "metrics.json"),
        "eval_pngs": {n: str(eval_dir / n) for n in EVAL_PNGS if (eval_dir / n).is_file()},
        "history": meta.provenance.get("history") or [],
        "profiles": _json(explain_dir / "part_profiles.json"),
        "explain_summary": _json(explain_dir / "summary.json"),
        "explain_pngs": explain_pngs,
    }
