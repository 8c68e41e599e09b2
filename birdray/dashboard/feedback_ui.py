"""The widgets that turn a person's answer into feedback (``POST /v1/feedback``), shared by the
Classify and Review pages.

The species list is the served model's own (``GET /v1/model``), so every choice is a class the
API accepts. No example photo per species is shown: the dashboard has no access to the training
dataset (it talks to Serve and reads reports), and Serve offers none.
"""

from __future__ import annotations

import streamlit as st

from birdray.class_names import ClassIndex
from birdray.dashboard.client import (
    FeedbackRefused,
    ServiceError,
    send_feedback,
    service_status,
    species_name,
)
from birdray.dashboard.settings import Settings
from birdray.feedback.store import NOT_A_BIRD, UNSURE, FeedbackError, read_feedback

SPECIAL = {NOT_A_BIRD: "not a bird", UNSURE: "unsure"}


def answer_name(answer: str) -> str:
    return SPECIAL.get(answer) or species_name(answer)


def served_model(settings: Settings) -> dict:
    """``GET /v1/model`` as the sidebar fetched it on this run ({} when the service is down);
    asked again only for another URL (a page run on its own)."""
    status = st.session_state.get("service_status")
    if not status or status.get("url") != settings.serve_url:
        status = {**service_status(settings.serve_url), "url": settings.serve_url}
        st.session_state["service_status"] = status
    return status["model"] or {}


def served_classes(settings: Settings) -> list[str]:
    """The served model's class names ([] when the service is not answering)."""
    return list(served_model(settings).get("classes") or [])


@st.cache_data(show_spinner=False, ttl=10)
def stored_answers(location: str) -> tuple[dict[str, str], str]:
    """(sha256 -> latest answer in the feedback store, why it could not be read: '' when it
    could). Read directly (Serve has no route for it); emptied after every answer sent from
    here. A store with a bad part is said, never shown as 'nothing answered yet'."""
    try:
        table = read_feedback(location)
    except FeedbackError as exc:
        return {}, str(exc)
    except (OSError, ValueError) as exc:  # e.g. a bucket that cannot be reached
        return {}, f"{location}: {type(exc).__name__}: {str(exc)[:200]}"
    answers = dict(zip(table["sha256"].to_pylist(), table["answer"].to_pylist(), strict=True))
    return answers, ""


def answer_options(classes: list[str]) -> list[str]:
    """The model's classes, then 'not a bird' and 'unsure' where /v1/feedback would read them
    so: a class it matches (``002.Unsure``, any case) is that class, never offered twice."""
    index = ClassIndex.of(classes)
    reserved = [a for a in (NOT_A_BIRD, UNSURE) if index.get(a) is None and not index.could_mean(a)]
    return [*classes, *reserved]


def species_picker(settings: Settings, key: str, label: str = "The right species") -> str | None:
    """A searchable choice (type to filter) of the model's species, 'not a bird' or 'unsure'."""
    options = answer_options(served_classes(settings))
    return st.selectbox(
        label,
        options,
        index=None,
        key=key,
        format_func=answer_name,
        placeholder="Type a species name to search",
    )


def post_answer(
    settings: Settings, name: str, data: bytes, predicted: str, version: str, answer: str
) -> tuple[bool, str]:
    """Send one answer; (True, 'Saved ...') or (False, the reason in one line)."""
    try:
        result = send_feedback(
            settings, name, data, predicted=predicted, model_version=version, answer=answer
        )
    except (ServiceError, FeedbackRefused) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"Not saved: {reason}"
    stored_answers.clear()  # the store changed: the next read must see this answer
    return True, f"Saved: {answer_name(result.get('species', answer))} ({result.get('verdict')})"


def show_outcome(outcome: tuple[bool, str] | None) -> None:
    if outcome:
        (st.success if outcome[0] else st.error)(outcome[1])


def feedback_buttons(
    settings: Settings, key: str, name: str, data: bytes, predicted: str, version: str
) -> None:
    """'Correct' / 'Wrong' under a prediction; 'Wrong' opens the species picker."""
    state = f"feedback-{key}"
    left, right, _ = st.columns([1, 1, 4])
    if left.button("Correct", key=f"{state}-correct", icon=":material/check:"):
        st.session_state[state] = post_answer(settings, name, data, predicted, version, predicted)
    if right.button("Wrong", key=f"{state}-wrong", icon=":material/close:"):
        st.session_state[f"{state}-open"] = True
    if st.session_state.get(f"{state}-open"):
        answer = species_picker(settings, f"{state}-species")
        if st.button("Send correction", key=f"{state}-send", disabled=answer is None):
            st.session_state[state] = post_answer(settings, name, data, predicted, version, answer)
            st.session_state[f"{state}-open"] = False
    show_outcome(st.session_state.get(state))
