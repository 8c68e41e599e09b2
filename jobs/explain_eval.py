"""``python jobs/explain_eval.py ...`` is ``birdray explain-eval ...``: same parser, same code."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("explain-eval"))
