"""Classify page: upload photos, get the species with calibrated confidence, ask why.

Each photo goes to ``POST /v1/predict`` (a few per request); each answer, or the reason there is
none, is shown next to its photo, so one bad file never hides the others. On request the photo's
attribution overlay and part ranking come from ``POST /v1/explain``.
"""

from __future__ import annotations

import base64
import hashlib

import altair as alt
import pandas as pd
import streamlit as st

from birdray.dashboard.client import (
    EXPLAIN_METHODS,
    IMAGE_TYPES,
    ServiceError,
    classify,
    error_text,
    explain_file,
    species_name,
)
from birdray.dashboard.feedback_ui import feedback_buttons, served_model
from birdray.dashboard.settings import Settings

settings: Settings = st.session_state.get("settings") or Settings.from_env()
METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "saliency": "Saliency (SmoothGrad)",
    "integrated_gradients": "Integrated Gradients (slow)",
    "gradcam_early": "Grad-CAM, earlier stage (finer)",
}


def top_k_chart(top_k: list[dict]) -> alt.Chart:
    """Horizontal bars of calibrated probabilities, best species on top."""
    data = pd.DataFrame(
        {
            "species": [species_name(t["species"]) for t in top_k],
            "probability": [t["probability"] for t in top_k],
        }
    )
    bars = (
        alt.Chart(data)
        .mark_bar(color="#2e7d5b")
        .encode(
            x=alt.X(
                "probability:Q",
                title="calibrated confidence",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%"),
            ),
            y=alt.Y("species:N", sort="-x", title=None, axis=alt.Axis(labelLimit=260)),
            tooltip=["species", alt.Tooltip("probability:Q", format=".1%")],
        )
    )
    labels = bars.mark_text(align="left", dx=3).encode(text=alt.Text("probability:Q", format=".1%"))
    return (bars + labels).properties(height=alt.Step(28))


def show_explanation(name: str, data: bytes, method: str) -> None:
    with st.spinner(f"Explaining {name} with {METHOD_NAMES[method]}..."):
        try:
            result = explain_file(
                settings.serve_url,
                name,
                data,
                method,
                max(settings.timeout_s, 120.0),
            )
        except ServiceError as exc:
            st.error(f"No explanation for **{name}**: {exc}")
            return
    trust = result.get("reliability") or {}
    if trust.get("status") == "unreliable":
        st.warning(f"Unreliable for this model: {trust['message']}", icon="⚠️")
    elif trust.get("status") == "unverified":
        st.info(trust["message"])
    overlay, parts = st.columns([1, 1])
    target = species_name(result["target"]["species"])
    overlay.image(
        base64.b64decode(result["overlay_png_base64"]),
        caption=f"What drove '{target}' ({METHOD_NAMES[method]}): bright = more; dots: parts found",
    )
    show_parts(overlay, result.get("parts") or {}, target)
    regions, size = result.get("regions") or [], result.get("image") or {}
    if regions and size.get("width") and size.get("height"):
        top = regions[0]
        area = top["w"] * top["h"] / (size["width"] * size["height"])
        overlay.caption(
            f"The strongest region holds {top['share']:.0%} of the attribution "
            f"in {area:.0%} of the photo."
        )
    profile = result.get("part_profile")
    if profile:
        ranking = pd.DataFrame(
            sorted(profile.items(), key=lambda kv: -kv[1]), columns=["part", "share"]
        )
        parts.markdown(f"**Parts that usually decide '{target}'** (from the test-set evaluation)")
        parts.altair_chart(
            alt.Chart(ranking)
            .mark_bar(color="#c77c2e")
            .encode(
                x=alt.X("share:Q", title="share of attribution", axis=alt.Axis(format="%")),
                y=alt.Y("part:N", sort="-x", title=None, axis=alt.Axis(labelLimit=200)),
            )
            .properties(height=alt.Step(24)),
            width="stretch",
        )
    else:
        parts.info("No part profile for this species yet (run `birdray explain-eval`).")
    show_contrast(result.get("contrast") or {}, target)


def _part_lines(ranked: list[dict]) -> str:
    return "\n".join(
        f"- **{p['part']}**: {p['share']:.0%} of the map on {p['chance']:.0%} of the photo"
        for p in ranked
    )


def show_parts(column, parts: dict, target: str) -> None:
    """The parts located on this photo that hold most of the map, against their area."""
    if not parts.get("available"):
        column.caption(f"Parts: {parts.get('reason', 'not available')}")
        return
    if not parts["top"]:
        column.caption("No bird part was recognised on this photo.")
        return
    column.markdown(f"**Parts behind '{target}' on this photo**\n" + _part_lines(parts["top"]))
    column.caption(parts["note"])


def show_contrast(contrast: dict, target: str) -> None:
    """Why the answer and not the runner-up: the contrastive map and where they differ."""
    if not contrast.get("available"):
        return
    runner = species_name(contrast["runner_up"]["species"])
    st.markdown(
        f"#### Why '{target}' and not '{runner}' ({contrast['runner_up']['probability']:.1%})?"
    )
    image, words = st.columns([1, 1])
    image.image(
        base64.b64decode(contrast["overlay_png_base64"]),
        caption=f"Evidence for '{target}' over '{runner}': bright = more",
    )
    if contrast.get("empty"):
        words.caption(f"The model found nothing here that favours '{target}' over '{runner}'.")
    elif contrast["top"]:
        words.markdown("**Parts where they differ for the model**\n" + _part_lines(contrast["top"]))
    difference = contrast.get("profile_difference") or []
    if difference:
        words.markdown(f"**Typical profiles** (share of the map, '{target}' vs '{runner}')")
        words.dataframe(
            pd.DataFrame(difference).rename(
                columns={"species_share": target, "runner_up_share": runner}
            ),
            hide_index=True,
        )


def show_result(index: int, name: str, data: bytes, result: dict, method: str) -> None:
    with st.container(border=True):
        if not result.get("ok"):
            reason = result.get("service_error") or error_text(result.get("error", {}))
            st.error(f"**{name}** — {reason}")
            return
        photo, answer = st.columns([1, 2])
        photo.image(data, caption=name, width="stretch")
        prediction = result["prediction"]
        answer.markdown(f"### {species_name(prediction['species'])}")
        model = result.get("model") or {}
        version = result.get("model_version") or model.get("version", "")
        answer.markdown(
            f"**{prediction['confidence']:.1%}** calibrated confidence · "
            f"model {model.get('arch', '')} {version}"
        )
        answer.altair_chart(top_k_chart(result["top_k"]), width="stretch")
        with answer:
            key = f"{index}-{hashlib.sha256(data).hexdigest()[:16]}"
            feedback_buttons(settings, key, name, data, prediction["species"], version)
        if answer.toggle("Why? Show what drove this decision", key=f"explain-{index}-{name}"):
            show_explanation(name, data, method)


st.title("Classify bird photos")
st.write(
    "Upload one or more photos: each gets its most likely species, with the calibrated "
    "confidence of the top five, and on request the image regions and bird parts that "
    "drove the decision. Tell the model when it was right or wrong: your answers become "
    "training data for the next model."
)
uploads = st.file_uploader(
    "Bird photos",
    type=IMAGE_TYPES,
    accept_multiple_files=True,
    key="uploads",
    max_upload_size=settings.max_upload_mb,
    help="The service also checks every file: damaged or non-image files get a reason instead.",
)
st.caption(
    f"Accepted: {', '.join(t.upper() for t in IMAGE_TYPES)} · up to "
    f"{settings.max_upload_mb} MB per photo · photos are sent to {settings.serve_url} "
    "and stored only when you answer Correct / Wrong."
)
# the served package's measured best (explain-eval's method table) comes first
served = served_model(settings).get("explain_method")
default = EXPLAIN_METHODS.index(served) if served in EXPLAIN_METHODS else 0
method = st.selectbox(
    "Explanation method",
    EXPLAIN_METHODS,
    index=default,
    format_func=lambda m: METHOD_NAMES[m] + (" - measured best" if m == served else ""),
    key="explain_method",
)

if uploads:
    files = [(f.name, f.getvalue()) for f in uploads]
    bar = st.progress(0.0, text=f"Classifying {len(files)} photo(s)...")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Classified {done} of {total} photo(s)")

    results = classify(settings, files, progress=progress)
    bar.empty()
    ok = sum(1 for r in results if r.get("ok"))
    failed = len(results) - ok
    st.markdown(
        f"**{len(results)}** photo(s): **{ok}** classified"
        + (f", **{failed}** could not be classified" if failed else "")
    )
    for index, ((name, data), result) in enumerate(zip(files, results, strict=True)):
        show_result(index, name, data, result, method)
else:
    st.info("No photos yet: drop some above.")
