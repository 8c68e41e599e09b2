"""``birdray <job>`` in a process of its own, as a user starts it (Ctrl-C and exit-code tests)."""

from __future__ import annotations

import os
import subprocess
import sys


def birdray_process(argv: list[str], **env: str) -> subprocess.Popen:
    """``python -m birdray.cli *argv`` with stderr captured as text, stdout dropped, and no
    ``BIRDRAY_DEBUG`` (so errors take the user's one-line path); ``env`` adds variables."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    full_env.pop("BIRDRAY_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "birdray.cli", *argv],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
