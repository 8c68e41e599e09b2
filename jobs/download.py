"""`ray job submit -- python jobs/download.py ...`: same parser and code as `birdray download`."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("download"))
