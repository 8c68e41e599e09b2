"""``python jobs/explain_eval.py ...`` is ``birdray explain-eval ...``: same parser, same code."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("explain-eval"))
