"""`ray job submit -- python jobs/batch_score.py ...`: the same code path as `birdray score`."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("score"))
