"""`ray job submit -- python jobs/ingest.py ...`: the same parser and code as `birdray ingest`."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("ingest"))
