"""`ray job submit -- python jobs/download.py ...`: same parser and code as `birdray download`."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("download"))
