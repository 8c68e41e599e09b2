"""birdray dashboard: ``birdray dashboard`` (or ``streamlit run birdray/dashboard/app.py``).

A client of the Serve HTTP API (Classify) and of the Ray Jobs API (Batch), and a reader of the
reports other stages write (Models). It loads no model. Settings come from ``BIRDRAY_*``
environment variables (set by ``birdray dashboard``). The sidebar chooses among the configured
addresses and nothing else: the API key and the Ray token are sent only to them, and no secret is
ever a widget's value or in session state (both reach, or could reach, the browser).
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from birdray.dashboard.client import service_status
from birdray.dashboard.settings import Settings, api_key_for

PAGES = {
    "classify": st.Page(
        "views/classify.py", title="Classify", icon=":material/photo_camera:", default=True
    ),
    "batch": st.Page("views/batch.py", title="Batch scoring", icon=":material/folder_open:"),
    "review": st.Page("views/review.py", title="Review", icon=":material/rate_review:"),
    "models": st.Page("views/models.py", title="Models", icon=":material/monitoring:"),
}


def _choose(label: str, options: tuple[str, ...], key: str, hint: str) -> str:
    """One of the configured addresses: a choice when there are several, else plain text."""
    if len(options) > 1:
        return st.selectbox(label, options, key=key, help=hint)
    st.markdown(f"**{label}**  \n`{options[0]}`", help=hint)
    return options[0]


def sidebar_settings() -> Settings:
    """The environment's settings, with the configured addresses a person chose in the sidebar."""
    base = Settings.from_env()
    with st.sidebar:
        st.subheader("Connections")
        serve_url = _choose(
            "Serve URL",
            base.serve_urls,
            "serve_url",
            "Configured with birdray dashboard --serve-url (and --serve-urls).",
        )
        jobs = _choose(
            "Ray Jobs address",
            base.jobs_addresses,
            "jobs_address",
            "The Ray dashboard URL of the cluster that runs batch jobs; configured with "
            "birdray dashboard --jobs-address (and --jobs-addresses).",
        )
        settings = replace(base, serve_url=serve_url, jobs_address=jobs)
        if api_key_for(settings.serve_url):
            st.caption("API key: configured (sent only to the configured Serve URLs)")
        status = service_status(settings.serve_url)
        # the pages reuse this run's answer instead of asking /readyz and /v1/model again
        st.session_state["service_status"] = {**status, "url": settings.serve_url}
        if status["ready"] and status["model"]:
            model = status["model"]
            st.success(
                f"Serving **{model.get('arch')}** {model.get('version')} "
                f"({model.get('num_classes')} species)"
            )
        elif status["ready"]:
            st.success(status["message"])
        else:
            st.warning(status["message"])
    return settings


st.set_page_config(page_title="birdray", page_icon=":material/flutter_dash:", layout="wide")
st.session_state["settings"] = sidebar_settings()
st.navigation(list(PAGES.values())).run()
