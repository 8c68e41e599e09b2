"""`ray job submit -- python jobs/tune.py --config sweep_cub` = `birdray tune`."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("tune"))
