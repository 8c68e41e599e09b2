"""Batch page: submit ``birdray score`` through the Ray Jobs API, watch it, browse results.

The job runs on the cluster (``birdray score``'s code path); the dashboard only submits it,
polls status and logs, and reads the finished output folder (``_SUCCESS`` + Parquet).
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from birdray.dashboard.client import ServiceError, species_name
from birdray.dashboard.ray_jobs import (
    ScoringRequest,
    job_state,
    scoring_jobs,
    stop_job,
    submit_scoring,
)
from birdray.dashboard.settings import Settings
from birdray.dashboard.stage_reports import filter_rows, scoring_results, thumbnail

settings: Settings = st.session_state.get("settings") or Settings.from_env()
st.session_state.setdefault("results_dir", settings.score_dir)
STATUS_STYLE = {"SUCCEEDED": st.success, "FAILED": st.error, "STOPPED": st.warning}


def submit_form() -> None:
    with st.form("submit_scoring"):
        source = st.text_input(
            "Images to score: a folder or URI",
            key="batch_input",
            placeholder="photos/  or  s3://bucket/prefix",
        )
        output = st.text_input("Output folder", settings.score_dir, key="batch_output")
        left, right = st.columns(2)
        model = left.text_input(
            "Model",
            "production",
            key="batch_model",
            help="production, latest, v0003 (in the registry) or a package folder",
        )
        registry = right.text_input("Registry", settings.registry, key="batch_registry")
        explain = left.number_input(
            "Overlays for the N least confident images", 0, 500, 8, key="batch_explain"
        )
        overwrite = right.checkbox(
            "Replace a finished result in this folder", key="batch_overwrite"
        )
        if not st.form_submit_button("Submit scoring job", type="primary"):
            return
    try:
        request = ScoringRequest(
            input=source,
            output=output,
            model=model,
            registry=registry,
            explain_lowest=int(explain),
            overwrite=overwrite,
        )
        job_id = submit_scoring(settings, request)
    except ValueError as exc:
        st.error(f"Please check the form: {exc}.")
        return
    except ServiceError as exc:
        st.error(str(exc))
        return
    st.session_state["batch_selected"] = job_id
    st.session_state["results_dir"] = output.strip()
    st.success(f"Submitted job **{job_id}**.")


def job_panel(job_id: str) -> None:
    """Status and log tail; refreshes itself every few seconds until the job ends."""
    try:
        state = job_state(settings, job_id)
    except ServiceError as exc:
        st.error(str(exc))
        return
    show = STATUS_STYLE.get(state["status"], st.info)
    show(
        f"Job **{job_id}**: {state['status']}"
        + (f" — {state['message']}" if state["message"] else "")
    )
    st.code(state["logs"] or "(no log output yet)", language="text", height=300)
    if not state["terminal"]:
        if st.button("Stop this job", key=f"stop-{job_id}"):
            stop_job(settings, job_id)
        if st.session_state.get("watching") != job_id:
            st.session_state["watching"] = job_id
    elif st.session_state.pop("watching", None) == job_id:
        st.rerun()  # it just ended: refresh the whole page so the results appear
    finished = state["status"] == "SUCCEEDED" and state["output"]
    if finished and st.button("Show this job's results", key=f"show-{job_id}"):
        st.session_state["results_dir"] = state["output"]
        st.rerun()


def jobs_section() -> None:
    try:
        jobs = scoring_jobs(settings)
    except ServiceError as exc:
        st.error(str(exc))
        return
    if not jobs:
        st.info(f"No scoring jobs on {settings.jobs_address} yet.")
        return
    st.dataframe(pd.DataFrame(jobs), hide_index=True, height=min(36 * (len(jobs) + 1), 220))
    selected = st.selectbox("Job", [j["submission_id"] for j in jobs], key="batch_selected")
    running = next(j for j in jobs if j["submission_id"] == selected)["status"] in (
        "PENDING",
        "RUNNING",
    )
    st.fragment(job_panel, run_every=3 if running else None)(selected)


def species_chart(rows: pd.DataFrame) -> alt.Chart:
    counts = rows[rows["ok"]]["species"].map(species_name).value_counts().reset_index()
    counts.columns = ["species", "images"]
    return (
        alt.Chart(counts)
        .mark_bar(color="#2e7d5b")
        .encode(
            x=alt.X("images:Q", title="images", axis=alt.Axis(format="d", tickMinStep=1)),
            y=alt.Y("species:N", sort="-x", title=None, axis=alt.Axis(labelLimit=260)),
            tooltip=["species", "images"],
        )
        .properties(height=alt.Step(22))
    )


def lowest_confidence(rows: pd.DataFrame, overlays: dict[str, str], count: int) -> None:
    lowest = rows[rows["ok"]].nsmallest(count, "confidence")
    if lowest.empty:
        st.info("No scored images match the filters.")
        return
    columns = st.columns(4)
    for i, row in enumerate(lowest.itertuples()):
        with columns[i % 4].container(border=True):
            name = row.path.rsplit("/", 1)[-1]
            caption = f"{name}: {species_name(row.species)} · {row.confidence:.1%}"
            image = thumbnail(row.path)
            if image is not None:
                st.image(image, caption=caption, width="stretch")
            else:
                st.caption(f"{caption} (the photo is not readable from the dashboard)")
            if row.path in overlays:
                st.image(overlays[row.path], caption="what drove it", width="stretch")


def results_section() -> None:
    folder = st.text_input("Results folder", key="results_dir")
    results = scoring_results(folder)
    if results["state"] == "missing":
        st.info(f"Nothing at {folder} yet: submit a job above, or enter a results folder.")
        return
    if results["state"] == "running":
        st.info(f"{folder} has no finished result yet (no _SUCCESS): a job may still be writing.")
        return
    if results["state"] == "foreign":
        st.warning(f"{folder} is not a birdray result: its _SUCCESS was written by another tool.")
        return
    if results["state"] == "unreadable":
        st.error(results["why"])
        return
    rows, summary = results["rows"], results["summary"]
    a, b, c, d = st.columns(4)
    a.metric("Files seen", summary.get("files_seen", len(rows)))
    b.metric("Scored", summary.get("scored", int(rows["ok"].sum())))
    c.metric("Errors", summary.get("failed", int((~rows["ok"]).sum())))
    d.metric("Model", (summary.get("model") or {}).get("version", "?"))
    species = sorted(rows.loc[rows["ok"], "species"].dropna().unique())
    left, middle, right = st.columns([2, 1, 1])
    chosen = left.multiselect("Species", species, format_func=species_name, key="filter_species")
    threshold = middle.slider("Confidence threshold", 0.0, 1.0, 0.5, 0.05, key="filter_threshold")
    below = middle.checkbox("Only below the threshold", key="filter_below")
    show = right.radio("Show", ["all", "scored", "errors"], horizontal=True, key="filter_show")
    shown = filter_rows(rows, chosen, threshold if below else None, show)
    st.dataframe(
        shown,
        hide_index=True,
        column_config={
            "confidence": st.column_config.ProgressColumn(
                "confidence", format="percent", min_value=0.0, max_value=1.0
            )
        },
    )
    st.download_button(
        "Download these rows as CSV",
        shown.to_csv(index=False).encode(),
        file_name="predictions.csv",
        mime="text/csv",
        key="download_csv",
    )
    st.caption(f"{len(shown)} of {len(rows)} rows")
    if shown["ok"].any():
        st.markdown("**Images per predicted species**")
        st.altair_chart(species_chart(shown), width="stretch")
    st.markdown("**Least confident images** (worth a look by a person)")
    count = st.slider("How many", 1, 24, 8, key="lowest_count")
    lowest_confidence(shown, results["overlays"], count)


st.title("Batch scoring")
st.write(
    "Score a whole folder of photos on the Ray cluster, watch the job, then browse and "
    "download its predictions."
)
st.subheader("Submit a job")
submit_form()
st.subheader("Jobs")
jobs_section()
st.subheader("Results")
results_section()
