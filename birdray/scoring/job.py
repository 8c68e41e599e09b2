"""``birdray score``: batch-score every image under a folder or URI (or an ingested split).

    birdray score --input photos/ --model production --registry runs/registry --output scored/
    birdray score --input data/cub_parquet --split test --model runs/pkg --output out/ --resume true

The driver lists the files (that list is "files seen"); Ray Data reads, decodes and preprocesses
them in CPU tasks with the model's own data config, and a pool of actors, each holding the model
(on a GPU when ``--num-gpus`` is set), scores them. Every listed file comes back as exactly one row;
the driver streams the rows into Parquet inside the output folder's staging area, checks that the
counts reconcile, and only then commits (see ``birdray.scoring.output``).

``--resume`` keeps the rows this model version already scored OK (in the finished output, or in
the finished files of an interrupted run) for inputs that have not changed (a file's size and
mtime; a dataset row's photo hash and shard), and scores the rest. Failed rows are retried.
Inputs no longer listed drop out: the output always describes the input.

The output must be birdray's: new, empty or holding a birdray result (``output.foreign``), and
neither the input folder nor one that holds it (``places.clash``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc

from birdray import storage
from birdray.config import ConfigError, field, flag, numbers_out_of_range, to_dict
from birdray.devices import DEVICE_HELP, gpus_to_use
from birdray.explain.methods import METHODS as EXPLAIN_METHODS
from birdray.images import DEFAULT_MAX_PIXELS
from birdray.model.package import read_metadata
from birdray.registry.ref import ModelChoice
from birdray.resources import DATA_CPUS, plan_pool, watched
from birdray.runtime import init_ray
from birdray.scoring.decode import UNREACHABLE
from birdray.scoring.output import (
    CSV_FILE,
    EXPLANATIONS,
    PARTIAL_PREFIX,
    PREDICTIONS,
    SUCCESS,
    SUMMARY_FILE,
    OutputError,
    PartWriter,
    commit,
    foreign,
    locked,
    new_run_id,
    summarize,
    write_csv,
    write_json,
    writing,
)
from birdray.scoring.places import clash, odd_bucket_path
from birdray.scoring.remote import foreign_prefix, marker, mirror_of, publish, pull
from birdray.scoring.resume import input_identity, reusable_rows, write_inputs
from birdray.scoring.sources import (
    DEFAULT_EXTENSIONS,
    Source,
    SourceError,
    list_inputs,
    normalize_extensions,
    open_source,
)
from birdray.scoring.stages import (
    SCHEMA,
    Scorer,
    StagePlan,
    build_dataset,
    config_json,
    ship_package,
)


@dataclass
class ScoreConfig(ModelChoice):
    input: str = field(
        "", "image folder or URI (s3://bucket/prefix), or an ingested dataset", required=True
    )
    output: str = field(
        "", "output folder or bucket URI: predictions/, summary.json, _SUCCESS", required=True
    )
    split: str = field("test", "split to score when --input is an ingested dataset")
    extensions: list[str] = field(DEFAULT_EXTENSIONS, "extensions to score; [] or '*': every file")
    batch_size: int = field(32, "images per model call (and per preprocessing batch)")
    pool_size: int = field(1, "scoring actors; each holds one copy of the model")
    actor_cpus: float = field(1.0, "CPUs reserved per scoring actor")
    num_gpus: float = field(0.0, "GPUs per scoring actor (0: as --device decides)")
    device: str = field("auto", DEVICE_HELP)
    torch_threads: int = field(
        0, "torch threads per actor (0: on CPU the node's cores, shared by the actors there)"
    )
    preprocess_cpus: float = field(1.0, "CPUs reserved per decode/preprocess task")
    preprocess_memory_mb: int = field(
        768, "memory reserved per decode task (a worker with torch+timm peaked at ~490 MiB)"
    )
    stall_timeout_s: float = field(
        300.0, "stop with Ray's pending-resource view when no rows arrive this long (0: never)"
    )
    amp: bool = field(False, "bf16/fp16 autocast in the actors")
    top_k: int = field(5, "species kept per row, best first")
    low_confidence: float = field(0.5, "the summary counts scored rows below this confidence")
    max_file_mb: float = field(
        50.0, "larger files become error rows without being read (0: no limit)"
    )
    max_pixels: int = field(DEFAULT_MAX_PIXELS, "larger images (width x height) become error rows")
    rows_per_file: int = field(50_000, "rows per output Parquet file")
    csv: bool = field(False, "also write predictions.csv")
    resume: bool = field(False, "keep rows already scored OK by this model; score only the rest")
    overwrite: bool = field(False, "replace a finished output (refused otherwise)")
    explain_lowest: int = field(0, "write explanation overlays for the N lowest-confidence images")
    explain_method: str = field("gradcam", " | ".join(EXPLAIN_METHODS))
    review_below: float = field(
        0.0, "write review/ (thumbnail, top-k, overlay) of rows below this confidence (0: off)"
    )
    address: str = field("", "Ray address (empty: join RAY_ADDRESS or start a local Ray)")

    def __post_init__(self) -> None:
        # every number has a floor (0, or 1 for these); a negative, NaN or infinite one made
        # each row an error row, or a traceback, after Ray had started
        at_least_one = ("batch_size", "pool_size", "top_k", "rows_per_file", "max_pixels")
        problems = [
            (f"{flag(name)} must be >= {low:g} (a finite number), got {value}", True)
            for name, value, low in numbers_out_of_range(self, dict.fromkeys(at_least_one, 1))
        ]
        problems += [
            ("--input is required", not self.input),
            ("--output is required", not self.output),
            (
                "--max-file-mb is under one byte (0: no limit)",
                0 < self.max_file_mb * 2**20 < 1,
            ),
            ("--low-confidence must be within [0, 1]", not 0.0 <= self.low_confidence <= 1.0),
            ("--review-below must be within [0, 1]", not 0.0 <= self.review_below <= 1.0),
            (
                f"--explain-method must be one of {EXPLAIN_METHODS}",
                self.explain_method not in EXPLAIN_METHODS,
            ),
            ("--resume and --overwrite exclude each other", self.resume and self.overwrite),
        ]
        wrong = [text for text, bad in problems if bad]
        if wrong:
            raise ConfigError("; ".join(wrong))


def run_scoring(cfg: ScoreConfig, scorer_cls: type = Scorer) -> dict[str, Any]:
    """Score every image under --input; writes <output>/predictions/, summary.json, _SUCCESS."""

    started = time.time()
    source = open_source(cfg.input, cfg.split)
    remote = cfg.output.rstrip("/") if storage.is_remote(cfg.output) else ""
    # a bucket output is worked on in a local mirror and published when committed
    root = mirror_of(remote) if remote else storage.local_path(cfg.output)
    package_path = cfg.ref.resolve()
    meta = read_metadata(package_path)  # the hash is checked once, when shipped to the actors
    version = meta.version or meta.content_hash[:12]
    wrong = (
        odd_bucket_path(cfg.output)
        or clash(cfg.output, cfg.input)
        or (foreign_prefix(remote, root) if remote else foreign(root))
    )
    if wrong:  # before the lock: not even a .lock goes into a folder that is not ours
        raise OutputError(f"--output: {wrong}")
    with locked(root):
        seen = marker(remote) if remote else None  # publish refuses if this changes meanwhile
        if remote and not cfg.overwrite:
            pull(remote, root)  # what the bucket holds decides "finished" and what resume keeps
        if (root / SUCCESS).is_file() and not (cfg.resume or cfg.overwrite):
            raise OutputError(
                f"{cfg.output} already holds a finished run: pass --resume or --overwrite"
            )
        skipped: Counter = Counter()
        extensions = normalize_extensions(cfg.extensions)
        listing = list_inputs(source, extensions, exclude=remote or root, skipped=skipped)
        if not len(listing):  # "scored 0 of 0 files" and exit 0 would hide a wrong filter
            raise SourceError(
                f"nothing to score under {cfg.input}: {_no_files(extensions, skipped)}"
            )
        identity = input_identity(source)
        listed_at = time.time()
        reused = (
            reusable_rows(root, listing, version, identity) if cfg.resume else SCHEMA.empty_table()
        )
        todo = listing.filter(pc.invert(pc.is_in(listing["path"], reused["path"])))
        run_id = new_run_id()
        staging = root / f"{PARTIAL_PREFIX}{run_id}"
        write_inputs(staging, identity)
        pred_dir = staging / PREDICTIONS
        kept = PartWriter(pred_dir, "reused", cfg.rows_per_file)
        kept.write(reused)
        kept.close()
        scored = PartWriter(pred_dir, "part", cfg.rows_per_file)
        package: dict[str, Any] = {}
        if len(todo) or cfg.explain_lowest > 0:
            package = ship_package(package_path, cfg.address)
        scoring_started = time.time()
        stream: dict[str, Any] = {}
        if len(todo):
            cfg.pool_size = _fit_pool(cfg, source)
            # building it runs Ray tasks too (from_arrow's metadata): watched like the rows
            plan, data_config = StagePlan.of(cfg), config_json(meta.data_config)
            built = (
                build_dataset(source, todo, plan, package, data_config, scorer_cls, len(reused) > 0)
                for _ in (1,)
            )
            ds = next(watched(built, cfg.stall_timeout_s, "scoring set-up"))
            stream = _stream_rows(ds, scored, cfg.stall_timeout_s)
        scoring_s = time.time() - scoring_started
        summary = summarize(pred_dir, listing, cfg.low_confidence)
        if cfg.csv:
            write_csv(pred_dir, staging / CSV_FILE)
        if cfg.explain_lowest > 0:
            from birdray.scoring.explanations import write_explanations

            summary["explanations"] = write_explanations(
                pred_dir,
                staging / EXPLANATIONS,
                source,
                package,
                cfg.explain_lowest,
                cfg.explain_method,
                cfg.max_pixels,
                cfg.num_gpus,
            )
        if cfg.review_below > 0:
            from birdray.scoring.review import write_review

            summary["review"] = write_review(
                staging, pred_dir, source, cfg.review_below, cfg.max_pixels,
                cfg.preprocess_cpus, cfg.address or None,
            )  # fmt: skip
        summary.update(
            skipped_by_extension=dict(skipped.most_common()),
            input=cfg.input,
            input_kind=source.kind,
            output=remote or str(root),
            run_id=run_id,
            model={
                "version": version,
                "arch": meta.arch,
                "num_classes": meta.num_classes,
                "path": str(package_path),
            },
            resume={"reused": len(reused), "scored_now": scored.total},
            timing={
                "listing_s": round(listed_at - started, 3),
                "scoring_s": round(scoring_s, 3),
                "images_per_s": round(scored.total / scoring_s, 2) if scored.total else None,
                **stream,
                "total_s": round(time.time() - started, 3),
            },
            config=to_dict(cfg),
        )
        write_json(staging / SUMMARY_FILE, summary)
        commit(root, staging, {"run_id": run_id, "rows": summary["files_seen"]})
        if remote:  # a bucket gone meanwhile: one error naming it (the result stays in root)
            with writing(remote):
                publish(root, remote, seen)
    print(_headline(summary))
    return summary


def _fit_pool(cfg: ScoreConfig, source: Source) -> int:
    """The actor pool that fits beside the decode tasks (and a dataset's 1-CPU read tasks)."""

    data = max(cfg.preprocess_cpus, DATA_CPUS if source.kind == "dataset" else 0.0)
    cluster = init_ray(cfg.address or None)
    cfg.num_gpus = gpus_to_use(cfg.device, cfg.num_gpus, cluster)
    return plan_pool("scoring", cfg.pool_size, cfg.actor_cpus, cfg.num_gpus, cluster, data)


def _stream_rows(ds: Any, writer: PartWriter, stall_timeout_s: float = 0.0) -> dict[str, Any]:
    """Write result blocks as they arrive; time to the first block is start-up (workers, model)."""

    started, first_at, first_rows = time.time(), None, 0
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow")
    try:
        for batch in watched(batches, stall_timeout_s, "scoring"):
            writer.write(batch)
            gone = pc.filter(batch["error"], pc.starts_with(batch["error"], UNREACHABLE + ":"))
            if len(gone):  # the bucket itself is gone: end now, naming it (no _SUCCESS)
                raise SourceError(gone[0].as_py())
            if first_at is None:
                first_at, first_rows = time.time(), len(batch)
    finally:
        writer.close()  # an interrupted run still leaves whole files for --resume
    if first_at is None:
        return {}
    steady_s = time.time() - first_at
    rest = writer.total - first_rows
    return {
        "first_rows_s": round(first_at - started, 3),
        "steady_images_per_s": round(rest / steady_s, 2) if rest and steady_s > 0 else None,
    }


def _headline(s: dict[str, Any]) -> str:
    rate = s["timing"]["images_per_s"]
    return (
        f"scored {s['scored']} of {s['files_seen']} files ({s['failed']} failed, "
        f"{s['low_confidence']['count']} below {s['low_confidence']['threshold']:.2f} confidence; "
        f"{s['resume']['reused']} reused) with model {s['model']['version']} in "
        f"{s['timing']['total_s']:.1f} s{f' ({rate} img/s)' if rate else ''} -> {s['output']}"
        + (f"; {s['review']['rows']} to review in review/" if "review" in s else "")
        + (
            f"; not scored: {_skipped(s['skipped_by_extension'])}"
            if s.get("skipped_by_extension")
            else ""
        )
    )


def _skipped(skipped: dict[str, int]) -> str:
    """``3 files skipped by --extensions (.txt 2, .heic 1)``."""
    kinds = ", ".join(f"{ext} {n}" for ext, n in skipped.items())
    total = sum(skipped.values())
    return f"{total} file{'s' if total != 1 else ''} skipped by --extensions ({kinds})"


def _no_files(extensions: tuple[str, ...] | None, skipped: Counter) -> str:
    if not skipped:
        return "no files found there"
    return (
        f"no file has one of --extensions {', '.join(extensions or ())}; "
        f"{_skipped(dict(skipped.most_common()))}; add them to --extensions (or '*' for every file)"
    )
