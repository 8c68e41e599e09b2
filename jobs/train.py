"""`ray job submit -- python jobs/train.py ...`: the same parser and code as `birdray train`."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("train"))
