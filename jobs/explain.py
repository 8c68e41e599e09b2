"""``python jobs/explain.py ...`` is ``birdray explain ...``: same parser, same code."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("explain"))
