"""`ray job submit -- python jobs/synth.py ...`: the same parser and code as `birdray synth`."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("synth"))
