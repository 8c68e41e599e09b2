"""`ray job submit -- python jobs/train.py ...`: the same parser and code as `birdray train`."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("train"))
