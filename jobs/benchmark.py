"""`python jobs/benchmark.py {ingest,train,score,serve,explain,scaling,gpu,all}`: BENCHMARKS.md."""

from birdray.cli import run_job

if __name__ == "__main__":
    raise SystemExit(run_job("benchmark"))
