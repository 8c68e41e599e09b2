"""Serve a model over HTTP: ``python jobs/serve.py --registry runs/registry --model production``."""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("serve"))
