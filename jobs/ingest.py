"""`ray job submit -- python jobs/ingest.py ...`: the same parser and code as `birdray ingest`."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("ingest"))
