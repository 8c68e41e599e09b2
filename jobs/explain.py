"""``python jobs/explain.py ...`` is ``birdray explain ...``: same parser, same code."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("explain"))
