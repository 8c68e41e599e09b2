"""`ray job submit -- python jobs/train.py ...`: the same parser and code as `birdray train`."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("train"))
