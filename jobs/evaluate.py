"""`ray job submit -- python jobs/evaluate.py ...`: same parser and code as `birdray evaluate`."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("evaluate"))
