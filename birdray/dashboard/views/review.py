"""Review page: label the photos batch scoring was unsure about, one at a time.

``birdray score --review-below X`` writes ``<output>/review/review.parquet``; this page walks it
(least sure first) and posts each answer to ``POST /v1/feedback``, so the photo comes back as a
training row with ``birdray ingest --feedback``. The photo sent is the original file when it is
still readable (through ``birdray.storage``), else the review set's thumbnail.

What counts as answered: the rows answered in this session, plus the photos the feedback store
(``Settings.feedback_location``, read-only) already holds, matched by the SHA-256 of the bytes this
page would send. Part profiles come from the registry's copy of the scoring model version (its
``explain/part_profiles.json``) when it has one; otherwise they are left out.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import streamlit as st

from birdray import storage
from birdray.dashboard.client import species_name
from birdray.dashboard.feedback_ui import (
    answer_name,
    post_answer,
    served_model,
    show_outcome,
    species_picker,
    stored_answers,
)
from birdray.dashboard.settings import Settings
from birdray.feedback.store import NOT_A_BIRD, UNSURE
from birdray.scoring.review import read_review

settings: Settings = st.session_state.get("settings") or Settings.from_env()


@st.cache_data(show_spinner="Loading the review set...", ttl=30, max_entries=8)
def load_rows(output: str) -> list[dict[str, Any]]:
    """The review set's rows, each with the bytes to send and their SHA-256."""
    rows = read_review(output).to_pylist()
    for row in rows:
        try:
            row["photo"], row["photo_from"] = storage.read_bytes(row["path"]), "original"
        except (OSError, ValueError):  # moved or deleted since scoring: the thumbnail stands in
            row["photo"], row["photo_from"] = row["thumbnail"], "thumbnail"
        row["sha256"] = hashlib.sha256(row["photo"]).hexdigest() if row["photo"] else None
    return rows


def part_profiles(version: str) -> dict[str, dict[str, float]]:
    """species -> part shares from the registry's copy of ``version`` ({} when not available)."""
    from birdray.dashboard.stage_reports import model_report

    try:
        report = model_report(settings.registry, version)
    except Exception:  # not a registry version, or no registry: the page works without profiles
        return {}
    profiles, names = report.get("profiles") or {}, report["class_names"]
    return {names[int(k)]: v for k, v in (profiles.get("classes") or {}).items()}


def counts(rows: list[dict], answered: dict[str, str]) -> pd.DataFrame:
    """Per predicted species: photos labelled (here or already in the store) and still pending."""
    table = pd.DataFrame(
        {
            "species": [species_name(r["species"]) for r in rows],
            "labelled": [r["path"] in answered for r in rows],
        }
    )
    grouped = table.groupby("species")["labelled"].agg(labelled="sum", total="count")
    grouped["pending"] = grouped["total"] - grouped["labelled"]
    return grouped.drop(columns="total").reset_index().sort_values("pending", ascending=False)


def show_photo(row: dict, profiles: dict[str, dict[str, float]]) -> None:
    photo, info = st.columns([1, 1])
    if row.get("overlay_png"):
        photo.image(row["overlay_png"], caption=f"{row['path']} (what drove the prediction)")
    elif row.get("thumbnail"):
        photo.image(row["thumbnail"], caption=row["path"])
    else:
        photo.warning(f"No picture for {row['path']}: {row.get('thumbnail_error')}")
    top = row["top_k"][:3]
    info.markdown(
        f"**Model {row['model_version']} was unsure** ({row['confidence']:.1%} calibrated "
        "confidence). Its top candidates:"
    )
    info.dataframe(
        pd.DataFrame(
            {
                "species": [species_name(c["species"]) for c in top],
                "confidence": [f"{c['probability']:.1%}" for c in top],
            }
        ),
        hide_index=True,
    )
    shown = {
        species_name(c["species"]): profiles[c["species"]] for c in top if c["species"] in profiles
    }
    if shown:
        info.markdown("**Parts that usually decide each candidate** (share of attribution)")
        info.dataframe(pd.DataFrame(shown).style.format("{:.0%}"))


def answer_buttons(row: dict) -> str | None:
    """The person's answer for this photo (a class name, not_a_bird, unsure, 'skip') or None."""
    chosen = None
    cols = st.columns(len(row["top_k"][:3]))
    for i, (col, cand) in enumerate(zip(cols, row["top_k"][:3], strict=True)):
        if col.button(species_name(cand["species"]), key=f"review-top-{i}", width="stretch"):
            chosen = cand["species"]
    # keyed by photo, so a species picked for one photo is not preselected for the next
    other = species_picker(settings, f"review-other-{row['path']}", "Other species")
    left, mid, right, last = st.columns(4)
    if left.button("Send other species", key="review-send-other", disabled=other is None):
        chosen = other
    if mid.button("Not a bird", key="review-not-a-bird"):
        chosen = NOT_A_BIRD
    if right.button("Unsure", key="review-unsure"):
        chosen = UNSURE
    if last.button("Skip", key="review-skip"):
        chosen = "skip"
    return chosen


st.title("Review unsure photos")
st.write(
    "Photos batch scoring was unsure about (`birdray score --review-below 0.5`), least sure "
    "first. Each answer is stored as feedback and becomes a training row for the next model "
    "(`birdray ingest --feedback`)."
)
output = st.text_input(
    "Scoring output: a folder or URI", settings.score_dir, key="review_output"
).strip()
try:
    rows = load_rows(output)
except Exception as exc:  # no review set here: say where it would be and how to make one
    st.error(
        f"No review set in {output}: {type(exc).__name__}: {str(exc)[:200]}. Score with "
        "`birdray score --review-below 0.5` to make one."
    )
    st.stop()

session: dict[str, dict[str, str]] = st.session_state.setdefault("review_answers", {})
answered_here = session.setdefault(output, {})
skipped: set[str] = st.session_state.setdefault("review_skipped", set())
stored, unreadable = stored_answers(settings.feedback_location)
if unreadable:
    st.warning(
        f"The feedback store could not be read, so answers stored before are not counted "
        f"here: {unreadable}"
    )
answered = {
    r["path"]: answered_here.get(r["path"]) or stored[r["sha256"]]
    for r in rows
    if r["path"] in answered_here or r.get("sha256") in stored
}
pending = [r for r in rows if r["path"] not in answered]
model = served_model(settings)
versions = sorted({r["model_version"] for r in rows})
if model and versions and model.get("version") not in versions:
    st.warning(
        f"This review set was scored by model {', '.join(versions)} but {settings.serve_url} "
        f"serves {model.get('version')}: the API accepts feedback only for the served model."
    )

st.markdown(
    f"**{len(rows)}** photo(s) to review: **{len(answered)}** labelled, **{len(pending)}** pending"
)
show_outcome(st.session_state.get("review_outcome"))
queue = [r for r in pending if r["path"] not in skipped] or pending
if not rows:
    st.info("The review set is empty: every photo was above the threshold.")
elif not pending:
    st.success("Every photo in this review set is labelled.")
else:
    row = queue[0]
    with st.container(border=True):
        show_photo(row, part_profiles(row["model_version"]))
        if row["photo_from"] == "thumbnail":
            st.caption("The original file is not readable any more: the thumbnail is sent.")
        choice = answer_buttons(row)
    if choice == "skip":
        skipped.add(row["path"])
        st.session_state["review_outcome"] = None
        st.rerun()
    elif choice:
        name = row["path"].rsplit("/", 1)[-1]
        outcome = (
            post_answer(settings, name, row["photo"], row["species"], row["model_version"], choice)
            if row["photo"]
            else (False, "Not saved: neither the original file nor a thumbnail is readable")
        )
        st.session_state["review_outcome"] = outcome
        if outcome[0]:
            answered_here[row["path"]] = choice
            skipped.discard(row["path"])
        st.rerun()

with st.expander("Labelled / pending per predicted species", expanded=True):
    if rows:
        st.dataframe(counts(rows, answered), hide_index=True)
    st.caption(
        "Labelled: answered here, or already in the feedback store "
        f"({settings.feedback_location}) with the same image bytes."
    )
    if answered:
        st.caption(
            "Answers: "
            + ", ".join(
                f"{p.rsplit('/', 1)[-1]} → {answer_name(a)}" for p, a in list(answered.items())[:20]
            )
            + (f" and {len(answered) - 20} more" if len(answered) > 20 else "")
        )
