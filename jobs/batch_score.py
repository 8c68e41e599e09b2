"""`ray job submit -- python jobs/batch_score.py ...`: the same code path as `birdray score`."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("score"))
