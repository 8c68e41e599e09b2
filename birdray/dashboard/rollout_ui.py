"""The Models page's "Live rollout" section: a candidate model beside production in Serve.

What is served comes from Serve itself (``GET /v1/rollout``: mode, share, the two versions, the
shadow agreement and confidence histograms the ingress counted); what the versions are and where
the registry's aliases point comes from the registry. The dashboard never scrapes Prometheus
(Grafana does: ``cluster/grafana/birdray.json``).
"""

from __future__ import annotations

import itertools
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from birdray.dashboard.client import ServiceError, first_line, rollout_status

START_HINT = "birdray serve --candidate candidate --rollout shadow --rollout-share 0.1"


@st.cache_data(show_spinner=False, ttl=15)
def registry_aliases(registry: str) -> dict[str, str]:
    """``{alias: version}`` as the registry says now ({} when it cannot be read)."""
    from birdray.registry import read_aliases

    try:
        return {name: a["version"] for name, a in read_aliases(registry).items()}
    except Exception:  # an unreadable registry is reported by the page above
        return {}


def histogram(buckets: list[float], counts: list[int], model: str) -> pd.DataFrame:
    """One row per confidence bucket: its range, the share of images in it, the model."""
    total = sum(counts) or 1
    edges = [0.0, *buckets]
    return pd.DataFrame(
        {
            "confidence": [f"{lo:.2f}-{hi:.2f}" for lo, hi in itertools.pairwise(edges)],
            "share": [c / total for c in counts],
            "images": counts,
            "model": model,
        }
    )


def confidence_chart(data: pd.DataFrame, color: str) -> alt.Chart:
    return (
        alt.Chart(data)
        .mark_bar(color=color)
        .encode(
            x=alt.X("confidence:N", sort=None, title="top-1 confidence"),
            y=alt.Y("share:Q", axis=alt.Axis(format="%"), title="share of images"),
            tooltip=["confidence", "images", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(height=220)
    )


def _candidate_counts(state: dict[str, Any], version: str) -> list[int]:
    """The candidate's confidences: the requests it answered (canary) and shadowed (shadow)."""
    size = len(state["confidence_buckets"])
    answered = state["answered"].get(version, {}).get("confidence") or [0] * size
    shadowed = state["shadow_confidence"].get(version) or [0] * size
    return [a + s for a, s in zip(answered, shadowed, strict=True)]


def live_rollout(serve_url: str, registry: str, versions: list[dict[str, Any]]) -> None:
    """Render the section for the Serve app at ``serve_url`` and the registry's ``versions``."""
    try:
        state = rollout_status(serve_url)
    except ServiceError as exc:
        st.info(f"No live rollout to show: {first_line(exc)}.")
        return
    if state is None:
        st.info(f"The Serve app at {serve_url} has no /v1/rollout (an older birdray).")
        return
    served = state["versions"]
    production, candidate = served["production"], served.get("candidate")
    a, b, c, d = st.columns(4)
    a.metric("Mode", state["mode"])
    b.metric("Candidate share", f"{state['share']:.0%}" if candidate else "—")
    c.metric("Production (served)", production)
    d.metric("Candidate (served)", candidate or "—")
    aliases = registry_aliases(registry)
    if aliases:
        st.caption(
            "Registry aliases: " + ", ".join(f"{k} → {v}" for k, v in sorted(aliases.items()))
        )
    if aliases.get("production", production) != production:
        st.warning(
            f"The registry's production is {aliases['production']} but Serve answers with "
            f"{production}: apply the new user_config (README, 'Rollout') to follow the promote."
        )
    if candidate is None:
        st.info(f"No candidate is served: production answers everything. Start a rollout with "
                f"`{START_HINT}`.")  # fmt: skip
        return
    for pair in state["shadow"]:
        if (pair["production"], pair["candidate"]) != (production, candidate):
            continue
        left, mid, right = st.columns(3)
        agreement = pair["agreement"]
        left.metric("Shadow agreement (same top-1)", "—" if agreement is None else
                    f"{agreement:.1%}")  # fmt: skip
        mid.metric("Images compared", pair["compared"], help=f"{pair['failed']} candidate failures")
        delta = pair["mean_confidence_delta"]
        right.metric("Mean confidence difference (candidate - production)",
                     "—" if delta is None else f"{delta:+.3f}")  # fmt: skip
    info = {row["version"]: row for row in versions}
    table = pd.DataFrame(
        [
            {"version": v, "role": role, "requests answered": state["answered"].get(v, {})
             .get("requests", 0), "val top-1": info.get(v, {}).get("val_top1"),
             "test top-1": info.get(v, {}).get("test_top1")}
            for role, v in (("production", production), ("candidate", candidate))
        ]
    )  # fmt: skip
    st.dataframe(table, hide_index=True)
    buckets = state["confidence_buckets"]
    prod_counts = state["answered"].get(production, {}).get("confidence") or [0] * len(buckets)
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Confidence, production {production}** ({sum(prod_counts)} images)")
        st.altair_chart(
            confidence_chart(histogram(buckets, prod_counts, production), "#2e7d5b"),
            width="stretch",
        )
    cand_counts = _candidate_counts(state, candidate)
    with right:
        st.markdown(f"**Confidence, candidate {candidate}** ({sum(cand_counts)} images)")
        st.altair_chart(
            confidence_chart(histogram(buckets, cand_counts, candidate), "#c77c2e"),
            width="stretch",
        )
    st.caption(
        "Counted by the ingress replica that answered, since it started; Ray's metrics endpoint "
        "has the totals over all replicas."
    )
