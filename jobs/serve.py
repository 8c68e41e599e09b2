"""Serve a model over HTTP: ``python jobs/serve.py --registry runs/registry --model production``."""

from birdray.cli import exit_with, run_job

if __name__ == "__main__":
    exit_with(run_job("serve"))
