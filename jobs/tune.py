"""`ray job submit -- python jobs/tune.py --config sweep_cub` = `birdray tune`."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("tune"))
