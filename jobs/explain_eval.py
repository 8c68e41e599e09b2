"""``python jobs/explain_eval.py ...`` is ``birdray explain-eval ...``: same parser, same code."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("explain-eval"))
