"""Models page: how good is the production model, how did the Tune candidates compare, what is
in the registry. Everything here is read from files the other stages wrote; nothing is computed.
The "Live rollout" tab (``rollout_ui``) asks the Serve app what it serves now.
"""

from __future__ import annotations

from dataclasses import replace

import altair as alt
import pandas as pd
import streamlit as st

from birdray.dashboard.client import species_name
from birdray.dashboard.rollout_ui import live_rollout
from birdray.dashboard.settings import Settings
from birdray.dashboard.stage_reports import (
    find_sweeps,
    model_report,
    registry_versions,
    tune_report,
)
from birdray.feedback.report import species_report
from birdray.feedback.store import FeedbackError, read_feedback

settings: Settings = st.session_state.get("settings") or Settings.from_env()


def percent(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.1%}"


def bars(data: pd.DataFrame, x: str, y: str, color: str = "#2e7d5b", fmt: str = "%") -> alt.Chart:
    return (
        alt.Chart(data)
        .mark_bar(color=color)
        .encode(
            x=alt.X(f"{x}:Q", axis=alt.Axis(format=fmt)),
            y=alt.Y(f"{y}:N", sort="-x", title=None, axis=alt.Axis(labelLimit=260)),
            tooltip=[y, alt.Tooltip(f"{x}:Q", format=".3f")],
        )
        .properties(height=alt.Step(24))  # a fixed band per row: every label stays readable
    )


def evaluation(report: dict) -> None:
    metrics = report["metrics"]
    if not metrics:
        st.info("This version has no evaluation report yet (run `birdray evaluate --model ...`).")
        return
    a, b, c, d = st.columns(4)
    a.metric(f"{metrics.get('split', 'test')} top-1 accuracy", percent(metrics.get("top1")))
    b.metric("top-5 accuracy", percent(metrics.get("top5")))
    c.metric(
        "calibration error (ECE)",
        f"{metrics.get('ece_after', float('nan')):.3f}",
        delta=f"{metrics.get('ece_after', 0) - metrics.get('ece_before', 0):+.3f} "
        "after temperature scaling",
        delta_color="inverse",
    )
    d.metric("images evaluated", metrics.get("count", "—"))
    names = metrics.get("class_names") or report["class_names"]
    per_class = pd.DataFrame(
        {
            "species": [species_name(n) for n in names],
            "accuracy": metrics.get("per_class_accuracy") or [],
        }
    )
    pngs = report["eval_pngs"]
    left, right = st.columns(2)
    with left:
        st.markdown("**Per-species accuracy**")
        st.altair_chart(bars(per_class.dropna(), "accuracy", "species"), width="stretch")
    if "confusion_matrix.png" in pngs:
        right.markdown("**Confusion matrix** (rows: true species)")
        right.image(pngs["confusion_matrix.png"], width="stretch")
    left, right = st.columns(2)
    if "reliability.png" in pngs:
        left.markdown("**Reliability** (confidence vs accuracy, before / after calibration)")
        left.image(pngs["reliability.png"], width="stretch")
    with right:
        training_curves(report["history"], pngs.get("train_val_losses.png"))


def training_curves(history_rows: list[dict], png: str | None) -> None:
    st.markdown("**Training curves**")
    history = pd.DataFrame(history_rows)
    if not history.empty and "epoch" in history:
        loss = [c for c in ("train_loss", "val_loss") if c in history]
        accuracy = [c for c in ("val_top1", "val_top5") if c in history]
        st.line_chart(history, x="epoch", y=loss, y_label="loss", height=240)
        st.line_chart(history, x="epoch", y=accuracy, y_label="accuracy", height=240)
    elif png:
        st.image(png, width="stretch")
    else:
        st.caption("No training history recorded in this package.")


def part_profile(report: dict) -> None:
    profiles, summary = report["profiles"], report["explain_summary"]
    if not profiles:
        st.info("No explainability evaluation for this version yet (run `birdray explain-eval`).")
        return
    classes = profiles.get("classes", {})
    names = report["class_names"]
    labels = sorted(classes, key=int)
    label = st.selectbox(
        "Species", labels, key="profile_species", format_func=lambda k: species_name(names[int(k)])
    )
    chance = profiles.get("chance") or {}
    data = pd.DataFrame(
        [{"part": p, "attribution": s, "area": chance.get(p)} for p, s in classes[label].items()]
    )
    st.markdown(
        f"**Where {profiles.get('method', '')} attribution falls on "
        f"'{species_name(names[int(label)])}'** (bars); black ticks: each part's share of the "
        "area, what attribution spread at random would give"
    )
    st.altair_chart(part_chart(data), width="stretch")
    if summary:
        st.markdown(
            "**Do the explanations point at the bird?** Hit rates above chance are good; a "
            "deletion AUC below the random one means removing the highlighted pixels hurts most."
        )
        st.dataframe(explain_scores(summary), hide_index=True)
    with st.expander("Explainability plots"):
        for png in report["explain_pngs"]:
            st.image(png, width="stretch")


def part_chart(data: pd.DataFrame) -> alt.LayerChart:
    """Attribution share per part (bars, strongest first) with its area share (ticks)."""
    order = data.sort_values("attribution", ascending=False)["part"].tolist()
    y = alt.Y("part:N", sort=order, title=None, axis=alt.Axis(labelLimit=200))
    base = alt.Chart(data).encode(y=y)
    share = alt.Axis(format="%")
    attribution = base.mark_bar(color="#c77c2e").encode(
        x=alt.X("attribution:Q", axis=share, title="share of attribution"),
        tooltip=[
            "part",
            alt.Tooltip("attribution:Q", format=".1%"),
            alt.Tooltip("area:Q", format=".1%"),
        ],
    )
    area = base.mark_tick(color="black", thickness=2).encode(x="area:Q")
    return alt.layer(attribution, area).properties(height=alt.Step(24))


def explain_scores(summary: dict) -> pd.DataFrame:
    """One row per method from ``explain/summary.json``: pointing game and deletion, with chance."""
    rows = [
        {
            "method": method,
            "hits in box": r["pointing_bbox"],
            "box chance": r["pointing_bbox_chance"],
            "hits near a part": r["pointing_part"],
            "part chance": r["pointing_part_chance"],
            "deletion AUC": r["deletion"]["auc"]["deletion_correct"],
            "random AUC": r["deletion"]["auc"]["random_correct"],
        }
        for method, r in summary.get("methods", {}).items()
    ]
    return pd.DataFrame(rows).round(3)


def production_tab(registry: dict) -> None:
    versions = [r["version"] for r in registry["rows"] if "problem" not in r]
    current = registry["pointer"].get("version")
    broken = {r["version"]: r["problem"] for r in registry["rows"] if "problem" in r}
    if current in broken:  # else the tab quietly showed another version as if it were it
        st.error(f"The production version {current} cannot be read: {broken[current]}")
    if not versions:
        if broken:  # not "no versions yet": they are there, and the Registry tab says why
            st.warning(f"No version in {settings.registry} can be read: {', '.join(broken)}.")
        else:
            st.info(
                f"No model versions in {settings.registry} yet"
                " (train and `birdray registry promote`)."
            )
        return
    index = versions.index(current) if current in versions else len(versions) - 1
    version = st.selectbox(
        "Version",
        versions,
        index=index,
        key="model_version",
        format_func=lambda v: f"{v} (production)" if v == current else v,
    )
    try:
        report = model_report(settings.registry, version)
    except Exception as exc:  # a broken version (marker, metadata, calibration): said, not a box
        st.error(f"Cannot show {version}: {' '.join(str(exc).split())}")
        return
    st.caption(
        f"{report['arch']} · {len(report['class_names'])} species · "
        f"temperature {report['temperature']:.2f} · {report['path']}"
    )
    evaluation(report)
    st.subheader("Part profile")
    part_profile(report)


def tune_tab() -> None:
    sweeps = find_sweeps(settings.sweep_dir)
    if not sweeps:
        st.info(f"No Tune report under {settings.sweep_dir} yet (run `birdray tune`).")
        return
    chosen = st.selectbox("Sweep report", sweeps, key="sweep")
    report = tune_report(chosen)
    trials, summary = report["trials"], report["summary"]
    if summary:
        st.success(
            f"Winner: trial **{summary.get('best_trial')}** ({summary.get('arch')}), "
            f"val top-1 {percent(summary.get('val_top1'))}"
        )
    st.dataframe(
        trials,
        hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(c, format="percent") for c in ("val_top1", "val_top5")
        },
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Best val top-1 per trial**")
        data = trials.dropna(subset=["val_top1"]).assign(
            name=lambda t: t["trial"] + " · " + t["arch"]
        )
        st.altair_chart(bars(data, "val_top1", "name"), width="stretch")
    with right:
        curves = report["curves"]
        if curves is not None and not curves.empty:
            st.markdown("**Val top-1 per epoch**")
            st.line_chart(curves, x="epoch", y="val_top1", color="trial")
    for png in report["pngs"]:
        with st.expander(png.rsplit("/", 1)[-1]):
            st.image(png)


def registry_tab(registry: dict) -> None:
    if not registry["rows"]:
        st.info(f"The registry {settings.registry} is empty.")
        return
    st.dataframe(pd.DataFrame(registry["rows"]), hide_index=True)
    history = registry["pointer"].get("history") or []
    if history:
        st.caption("Production history (oldest first): " + " → ".join(history))


st.title("Models")
registry_input = st.text_input("Registry", settings.registry, key="models_registry")
sweep_input = st.text_input("Tune results folder", settings.sweep_dir, key="models_sweep_dir")
settings = replace(settings, registry=registry_input.strip(), sweep_dir=sweep_input.strip())
try:
    registry = registry_versions(settings.registry)
except Exception as exc:  # an unreachable or malformed registry URI
    st.error(f"Cannot read the registry {settings.registry}: {exc}")
    registry = {"rows": [], "pointer": {}}


def corrections_tab() -> None:
    """``birdray feedback report`` on the feedback store: how often people corrected the model."""

    location = settings.feedback_location
    try:
        rows = read_feedback(location).to_pylist()
    except FeedbackError as exc:  # a bad part or no store at all: never "no feedback yet"
        st.error(f"The feedback store cannot be read: {exc}")
        return
    except (OSError, ValueError) as exc:
        st.info(f"No feedback at {location} yet ({str(exc).splitlines()[0]}).")
        return
    report = species_report(rows)
    st.caption(
        f"{report['labelled']} answers naming a species, {report['corrected']} of them "
        f"corrections; {report['not_a_bird']} not a bird, {report['unsure']} unsure ({location})"
    )
    table = pd.DataFrame(
        [
            {"species": name, "answers": s["answers"], "corrected": s["corrected"],
             "correction rate": s["correction_rate"],
             "predicted instead": ", ".join(s["predicted_instead"])}
            for name, s in report["species"].items()
        ]
    )  # fmt: skip
    if not table.empty:
        st.altair_chart(
            bars(table, "correction rate", "species", color="#c0392b"), use_container_width=True
        )
        st.dataframe(table, hide_index=True)


production, rollout, tune, versions, corrections = st.tabs(
    ["Production model", "Live rollout", "Tune comparison", "Registry", "People's corrections"]
)
with production:
    production_tab(registry)
with rollout:
    live_rollout(settings.serve_url, settings.registry, registry["rows"])
with tune:
    tune_tab()
with versions:
    registry_tab(registry)
with corrections:
    corrections_tab()
