"""`ray job submit -- python jobs/batch_score.py ...`: the same code path as `birdray score`."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("score"))
