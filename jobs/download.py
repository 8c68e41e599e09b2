"""`ray job submit -- python jobs/download.py ...`: same parser and code as `birdray download`."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("download"))
