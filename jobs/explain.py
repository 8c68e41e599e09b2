"""``python jobs/explain.py ...`` is ``birdray explain ...``: same parser, same code."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("explain"))
