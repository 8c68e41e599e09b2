"""`ray job submit -- python jobs/synth.py ...`: the same parser and code as `birdray synth`."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("synth"))
