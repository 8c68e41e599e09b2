"""birdray dashboard: ``streamlit run dashboard/app.py`` (or ``birdray dashboard``).

A client of the Serve HTTP API (Classify) and of the Ray Jobs API (Batch), and a reader of the
reports other stages write (Models). It loads no model. Defaults come from ``BIRDRAY_*``
environment variables (set by ``birdray dashboard``); the sidebar can change the addresses.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st
from client import Settings, service_status

PAGES = {
    "classify": st.Page(
        "views/classify.py", title="Classify", icon=":material/photo_camera:", default=True
    ),
    "batch": st.Page("views/batch.py", title="Batch scoring", icon=":material/folder_open:"),
    "models": st.Page("views/models.py", title="Models", icon=":material/monitoring:"),
}


def sidebar_settings() -> Settings:
    """The environment's settings, with the addresses a person typed in the sidebar."""
    base = Settings.from_env()
    with st.sidebar:
        st.subheader("Connections")
        serve_url = st.text_input("Serve URL", base.serve_url, key="serve_url")
        api_key = st.text_input(
            "API key (if the service needs one)", base.api_key, type="password", key="api_key"
        )
        jobs = st.text_input(
            "Ray Jobs address",
            base.jobs_address,
            key="jobs_address",
            help="The Ray dashboard URL of the cluster that runs batch jobs.",
        )
        settings = replace(
            base,
            serve_url=serve_url.strip().rstrip("/"),
            api_key=api_key.strip(),
            jobs_address=jobs.strip().rstrip("/"),
        )
        status = service_status(settings.serve_url, settings.api_key)
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
