"""``birdray benchmark <stage>``: every stage against its practical limit and its peer, in one run.

The peer is the plain tool a user would pick instead (a DataLoader training or inference loop, a
FastAPI app, a single-process ingest: ``peers.py``), run in the same invocation on the same data.
Results go to ``<out>/results.json`` (rows + machine) and ``<out>/results.md`` (the table that
BENCHMARKS.md quotes). Ratios, never absolute timings, are what the goals are stated in.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from birdray.benchmark.measure import machine
from birdray.config import field
from birdray.runtime import init_ray

STAGES = ("ingest", "train", "score", "serve", "explain", "scaling", "gpu", "all")


@dataclass
class BenchmarkConfig:
    positional = "stage"
    stage: str = field("all", " | ".join(STAGES))
    out: str = field("runs/benchmark", "results folder (data is generated under it)")
    classes: int = field(20, "species in the generated data")
    per_class: int = field(
        600, "images per species: 12,000 (CUB-size), ~5,400 train, so steady state dominates"
    )
    scales: list[int] = field([1, 4, 16], "dataset multiples for the scaling run")
    scaling_per_class: int = field(20, "images per species at 1x in the scaling run")
    arch: str = field("resnet18", "model for train/score/serve")
    image_size: int = field(128, "resolution for train/score/serve")
    batch_size: int = field(16, "batch size")
    threads: int = field(2, "torch threads (the machine's cores)")
    repeats: int = field(3, "repeats of the ingest and explain timings (median and spread)")
    requests: int = field(300, "Serve requests per concurrency level, at least")
    requests_per_client: int = field(
        8,
        "and at least this many per client at each level: at 300, each of 128 clients sent 2.3"
        " and the level was mostly ramp and tail (BENCHMARKS.md)",
    )
    concurrency: list[int] = field([1, 8, 32, 128], "Serve concurrency levels (birdray and peer)")
    serve_proxy: str = field("serve", "birdray Serve's front door: serve | haproxy (`--proxy`)")
    peers: bool = field(True, "also run the plain-tool peers (DataLoader, FastAPI, one process)")
    explain_arch: str = field("resnet50", "model for explanation timings")
    explain_sizes: list[int] = field([224, 448], "resolutions for explanation timings")
    device: str = field("cpu", "cpu | cuda (cuda runs the GPU check, no Ray needed)")
    smoke: bool = field(False, "tiny sizes: checks the harness works (CI), numbers mean nothing")
    address: str = field("", "Ray address")


def _given(cfg: BenchmarkConfig) -> dict[str, Any]:
    """The fields that differ from the defaults: what the user asked for."""
    return {k: v for k, v in asdict(cfg).items() if v != getattr(BenchmarkConfig(), k)}


def effective(cfg: BenchmarkConfig) -> BenchmarkConfig:
    """The config that runs: with ``--smoke``, tiny sizes for what was left at its default (a
    size given with it is kept: a smoke run on other sizes measures those sizes)."""
    if not cfg.smoke:
        return cfg
    return BenchmarkConfig(**{**asdict(cfg), **_SMOKE, **_given(cfg)})


_SMOKE: dict[str, Any] = {
    "classes": 2,
    "per_class": 8,  # a few training steps per epoch at batch 2
    "scales": [1],
    "scaling_per_class": 8,
    "arch": "test_resnet",
    "image_size": 64,
    "batch_size": 2,
    "repeats": 1,
    "requests": 8,
    "requests_per_client": 1,
    "concurrency": [1, 4],
    "explain_arch": "test_resnet",
    "explain_sizes": [64],
}


def _package(cfg: BenchmarkConfig, out: Path, classes: int) -> Path:
    """A model package of the benchmark arch (weights don't change the speed)."""
    from birdray.model.factory import create_model
    from birdray.model.package import PackageMetadata, save_package
    from birdray.model.preprocess import resolve_data_config

    model = create_model(cfg.arch, classes)
    meta = PackageMetadata(
        arch=cfg.arch,
        num_classes=classes,
        class_names=[f"{i:03d}.Bench_{i}" for i in range(1, classes + 1)],
        data_config=resolve_data_config(model, cfg.image_size),
        image_size=cfg.image_size,
    )
    return save_package(out / "package", model, meta)


def _cell(value: float | None, unit: str = "") -> str:
    """A number as the table shows it; "—" for none measured (a 0 is shown as 0)."""
    return f"{value:.3g}{unit}" if _finite(value) else "—"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _json_safe(value: Any) -> Any:
    """NaN/inf (a percentile of no successful request) become null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _markdown(rows: list[dict[str, Any]], machine: dict[str, Any], command: str) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu'] or 'none'};"
        f" torch {machine['torch']}, timm {machine['timm']},"
        f" Ray {machine['ray'] or 'not installed'}.",
        f"Command: `{command}`",
        "",
        "Ratios are birdray / other: above 1 is faster for rates, slower for s and ms.",
        "",
        "| stage | metric | birdray | peer | ratio vs peer | limit | ratio vs limit | goal | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdict = {True: "yes", False: "**no**", None: ""}
    for r in rows:
        unit = f" {r['unit']}"
        each = [g["met"] for g in r.get("goals", [])]
        met = "; ".join(verdict[m] for m in each) if len(each) > 1 else verdict[r.get("met")]
        lines.append(
            f"| {r['stage']} | {r['metric']} | {_cell(r['value'], unit)} "
            f"| {_cell(r.get('peer'), unit)} | {_cell(r.get('peer_ratio'))} "
            f"| {_cell(r.get('baseline'), unit)} | {_cell(r.get('ratio'))} "
            f"| {r.get('goal', '')} | {met} |"
        )
    goals = [
        (r, g["goal"], g["met"])
        for r in rows
        for g in r.get("goals") or ([{"goal": r.get("goal"), "met": r.get("met")}])
        if g["met"] is not None
    ]
    if goals:  # what BENCHMARKS.md reports as met, counted by the run rather than by hand
        missed = "; ".join(
            f"{r['stage']}: {r['metric']} ({goal})" for r, goal, ok in goals if not ok
        )
        met_count = sum(ok for _, _, ok in goals)
        lines += [
            "",
            f"Goals met: {met_count} of {len(goals)}." + (f" Missed: {missed}." if missed else ""),
        ]
    return "\n".join(lines) + "\n"


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Run the chosen stage(s); write results.json and results.md under ``cfg.out``."""
    from birdray.benchmark import scoring, serving, stages  # torch: not at the CLI's start-up

    if cfg.stage not in STAGES:
        raise ValueError(f"unknown stage {cfg.stage!r}; choose from {', '.join(STAGES)}")
    cfg = effective(cfg)
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    _write(out, cfg, rows, final=False)  # an earlier run's results never pass for this one's
    if cfg.stage == "gpu" or cfg.device == "cuda":
        from birdray.benchmark.gpu import run as gpu_run
        from birdray.benchmark.gpu import table_rows

        result = gpu_run(cfg.device, cfg.arch, cfg.image_size, cfg.batch_size, cfg.repeats * 3)
        rows += table_rows(result)
        _write(out, cfg, rows, final=True, extra={"gpu": result})
        return {"results": str(out / "results.json"), "table": str(out / "results.md")}

    from birdray.data.ingest import IngestConfig, run_ingest
    from birdray.serve.proxy import choose_proxy

    if not cfg.address:
        choose_proxy(cfg.serve_proxy)  # before the local Ray starts: Serve reads it from there
    init_ray(cfg.address or None, num_cpus=4)
    want = {cfg.stage} if cfg.stage != "all" else set(STAGES) - {"gpu", "all"}
    size = f"{cfg.classes}x{cfg.per_class}"  # another size gets its own data, not an error
    source = stages.make_folder(out / f"data-{size}", cfg.classes, cfg.per_class)
    dataset = out / f"dataset-{size}"
    run_ingest(IngestConfig(source=str(source), out=str(dataset)))
    package = _package(cfg, out, cfg.classes)
    if "ingest" in want:
        rows += stages.bench_ingest(source, out / "ingest-bench", cfg.repeats, peers=cfg.peers)
    _write(out, cfg, rows, final=False)
    if "train" in want:
        rows += stages.bench_train(
            dataset,
            out / "train",
            cfg.arch,
            cfg.image_size,
            cfg.batch_size,
            cfg.threads,
            epochs=1 if cfg.smoke else 2,
            peers=cfg.peers,
        )
    _write(out, cfg, rows, final=False)
    if "score" in want:
        rows += scoring.bench_score(
            source, dataset, package, out / "score", cfg.batch_size, cfg.threads, peers=cfg.peers
        )
    _write(out, cfg, rows, final=False)
    if "serve" in want:
        rows += serving.bench_serve(
            source,
            package,
            cfg.requests,
            cfg.threads,
            cfg.concurrency,
            peers=cfg.peers,
            proxy=cfg.serve_proxy,
            per_client=cfg.requests_per_client,
        )
    _write(out, cfg, rows, final=False)
    if "explain" in want:
        rows += stages.bench_explain(cfg.explain_arch, tuple(cfg.explain_sizes), cfg.repeats)
    _write(out, cfg, rows, final=False)
    if "scaling" in want:
        for scale in cfg.scales:
            per_class = cfg.scaling_per_class * scale
            # its own folders: the stages above generated data at --per-class
            data = stages.make_folder(out / f"scaling-data-{scale}x", cfg.classes, per_class)
            label = f"scaling {scale}x"  # not the main stage's "(1x)" rows
            rows += stages.bench_ingest(data, out / f"ingest-{scale}x", cfg.repeats, label)
            rows += scoring.bench_score(
                data,
                None,
                package,
                out / f"score-{scale}x",
                cfg.batch_size,
                cfg.threads,
                label,
            )
    _write(out, cfg, rows, final=True)
    return {"results": str(out / "results.json"), "table": str(out / "results.md")}


def _write(
    out: Path,
    cfg: BenchmarkConfig,
    rows: list[dict[str, Any]],
    final: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    """results.json and results.md for the rows so far: a stage that fails late loses no
    earlier stage's numbers (a full run takes half an hour on 2 cores)."""
    info = machine()
    shown = lambda v: json.dumps(v, separators=(",", ":")) if isinstance(v, list) else v  # noqa: E731
    flags = " ".join(
        f"--{k.replace('_', '-')} {shown(v)}" for k, v in _given(cfg).items() if k != "stage"
    )
    command = f"birdray benchmark {cfg.stage} {flags}".strip()
    record = {
        "machine": info,
        "config": asdict(cfg),
        "rows": rows,
        "finished": final,
        **(extra or {}),
    }
    record = _json_safe({**record, "written_at": time.time()})
    (out / "results.json").write_text(json.dumps(record, indent=2, default=str, allow_nan=False))
    (out / "results.md").write_text(_markdown(rows, info, command))
    if final:
        print(_markdown(rows, info, command))
