"""`python jobs/benchmark.py {ingest,train,score,serve,explain,scaling,gpu,all}`: BENCHMARKS.md.

Each stage runs birdray's path, its bare limit and its plain-tool peer (DataLoader loops, a
FastAPI app, a single-process ingest) in this one invocation; `--no-peers` skips the peers.
"""

from birdray.cli import finish, run_job

if __name__ == "__main__":
    finish(lambda: run_job("benchmark"))
