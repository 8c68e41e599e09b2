"""`ray job submit -- python jobs/evaluate.py ...`: same parser and code as `birdray evaluate`."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("evaluate"))
