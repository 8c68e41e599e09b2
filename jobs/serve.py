"""Serve a model over HTTP: ``python jobs/serve.py --registry runs/registry --model production``."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("serve"))
