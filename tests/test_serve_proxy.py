"""Serve's front door (``birdray.serve.proxy``) without a cluster; with one: test_serve_cli."""

from __future__ import annotations

import os


def test_a_proxy_that_never_starts_is_one_line_with_the_machines_numbers(monkeypatch, capsys):
    """Serve gives its HTTP proxy 60 s, then raises a bare timeout, or the proxy actor's death
    ("killed by `ray.kill`"), as seen beside two busy loops on this 2-core machine: a Ray
    traceback that says nothing of why. ``birdray serve`` says it in one line, with the load."""
    from birdray import cli
    from birdray.serve import proxy

    def proxy_never_ready(**kwargs):
        raise TimeoutError("HTTP proxies not available after 60s.")

    monkeypatch.setattr(proxy, "_get_global_client", lambda **kwargs: None)
    monkeypatch.setattr(proxy.serve, "start", proxy_never_ready)
    monkeypatch.setattr(cli, "_run", lambda *args: proxy.ensure_serve())
    monkeypatch.delenv("BIRDRAY_DEBUG", raising=False)
    assert cli.main(["serve"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("birdray serve: error: Serve's HTTP proxy did not start within ")
    assert "(HTTP proxies not available after 60s.)" in err
    assert f"this machine has {os.cpu_count()} CPUs and a load average of " in err
