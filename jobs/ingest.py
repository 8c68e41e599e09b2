"""`ray job submit -- python jobs/ingest.py ...`: the same parser and code as `birdray ingest`."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("ingest"))
