"""The dashboard's credentials go only to the hosts it was configured with, never to the browser.

Two real HTTP servers on 127.0.0.1 record every request: one is the configured Serve/Jobs host,
the other a host a person might type into the sidebar. The app runs under ``AppTest``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.dashboard_fixtures import no_exceptions

API_KEY = "serve-key-0f3a9c41d2"
RAY_TOKEN = "ray-token-7be2d10c55"
ANSWERS = {
    "/readyz": {"status": "ready"},
    "/v1/model": {"arch": "resnet18", "version": "v0001", "num_classes": 4},
    "/api/version": {
        "version": "4",
        "ray_version": "2.60.0",
        "ray_commit": "x",
        "session_name": "s",
    },
    "/api/jobs/": [],
}


class Recorder:
    """An HTTP server on 127.0.0.1 that answers like Serve / the Jobs API and keeps every header."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers)))
                body = json.dumps(ANSWERS.get(self.path.split("?")[0], {})).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def header_values(self) -> str:
        return " ".join(v for _, _, headers in self.requests for v in headers.values())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hosts() -> Iterator[tuple[Recorder, Recorder]]:
    configured, stranger = Recorder(), Recorder()
    yield configured, stranger
    configured.close()
    stranger.close()


def _protos(node) -> Iterator:
    """Every element's protobuf: what Streamlit sends to the browser."""
    if getattr(node, "proto", None) is not None:
        yield node.proto
    for child in getattr(node, "children", {}).values():
        yield from _protos(child)


def _sent_to_browser(at) -> bytes:
    messages = [p.SerializeToString() for p in _protos(at._tree)]
    messages.append(at._tree.get_widget_states().SerializeToString())
    return b"".join(messages)


def _point_sidebar_at(at, address: str) -> None:
    """What a person can do in the sidebar to send the app elsewhere."""
    for key in ("serve_url", "jobs_address"):
        for widget in [w for w in at.text_input if w.key == key]:
            widget.set_value(address)
        for widget in [w for w in at.selectbox if w.key == key]:
            assert address not in widget.options  # only configured addresses to choose from
    at.run()


def test_credentials_go_only_to_configured_hosts_and_never_to_the_browser(hosts, app_test):
    configured, stranger = hosts
    backup = Recorder()  # on the allow-list: the sidebar may switch to it
    at = app_test(
        BIRDRAY_SERVE_URL=configured.url,
        BIRDRAY_SERVE_URLS=backup.url,
        BIRDRAY_JOBS_ADDRESS=configured.url,
        BIRDRAY_API_KEY=API_KEY,
        RAY_AUTH_TOKEN=RAY_TOKEN,
    )
    no_exceptions(at)
    _point_sidebar_at(at, stranger.url)
    at.switch_page("views/batch.py").run()  # lists jobs: the Ray token is used here
    no_exceptions(at)

    assert stranger.requests == [], stranger.requests  # an unconfigured host gets nothing at all
    assert API_KEY in configured.header_values()  # the configured host gets what it needs
    assert f"Bearer {RAY_TOKEN}" in configured.header_values()

    shown = _sent_to_browser(at)
    assert API_KEY.encode() not in shown and RAY_TOKEN.encode() not in shown
    state = repr(at.session_state.to_dict())
    assert "settings" in state and API_KEY not in state and RAY_TOKEN not in state

    at.switch_page("views/classify.py").run()
    at.selectbox(key="serve_url").select(backup.url).run()  # switching within the allow-list
    no_exceptions(at)
    assert API_KEY in backup.header_values()
    assert stranger.requests == []
    backup.close()


def test_client_refuses_unconfigured_addresses_before_connecting(hosts, monkeypatch):
    from birdray.dashboard.client import ServiceError, service_status
    from birdray.dashboard.ray_jobs import jobs_client
    from birdray.dashboard.settings import api_key_for

    configured, stranger = hosts
    monkeypatch.setenv("BIRDRAY_SERVE_URL", configured.url)
    monkeypatch.setenv("BIRDRAY_JOBS_ADDRESS", configured.url)
    monkeypatch.setenv("BIRDRAY_API_KEY", API_KEY)
    monkeypatch.setenv("RAY_AUTH_TOKEN", RAY_TOKEN)
    assert api_key_for(f"{configured.url}/v1/predict") == API_KEY
    assert api_key_for(f"{stranger.url}/v1/predict") == ""
    assert api_key_for(configured.url.replace("127.0.0.1", "127.0.0.1.evil.example")) == ""
    status = service_status.__wrapped__(stranger.url)
    assert not status["ready"] and "not a configured Serve URL" in status["message"]
    with pytest.raises(ServiceError, match="not a configured Ray Jobs address"):
        jobs_client(stranger.url)
    assert stranger.requests == []
