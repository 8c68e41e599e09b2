"""`ray job submit -- python jobs/synth.py ...`: the same parser and code as `birdray synth`."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("synth"))
