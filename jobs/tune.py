"""`ray job submit -- python jobs/tune.py --config sweep_cub` = `birdray tune`."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("tune"))
