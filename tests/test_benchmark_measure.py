"""The load client's accounting: answers, refusals and the CPU each answer cost (no Ray)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from birdray.benchmark.measure import http_load, machine_busy_s


class _Handler(BaseHTTPRequestHandler):
    """Answers 200 after burning a little CPU, or 503 for every third request."""

    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).count += 1
            refuse = self.count % 3 == 0
        sum(i * i for i in range(200_000))  # a server that works for its answer
        self.send_response(503 if refuse else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_machine_busy_seconds_only_grow():
    first = machine_busy_s()
    if first is None:
        pytest.skip("no /proc/stat on this OS: the CPU rows are left out there")
    sum(i * i for i in range(2_000_000))
    assert machine_busy_s() >= first > 0


def test_http_load_counts_refusals_and_prices_each_answer(server):
    _Handler.count = 0
    load = http_load(server, [b"jpeg bytes"], requests=30, concurrency=3)
    assert load["requests"] == 30 and load["failed"] == 10  # every third answered 503
    assert len(load["latencies_s"]) == 20 and load["req_s"] > 0
    assert load["client_cpu_ms_per_answer"] > 0
    if machine_busy_s() is not None:  # the server's work lands on the machine's clock
        assert load["cpu_ms_per_answer"] > 0
