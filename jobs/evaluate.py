"""`ray job submit -- python jobs/evaluate.py ...`: same parser and code as `birdray evaluate`."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("evaluate"))
