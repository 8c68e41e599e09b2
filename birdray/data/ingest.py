"""Ingest CUB (folder or archive) or one's own photos into Parquet shards + a manifest.

Own photos (a folder per species, or a CSV of ``path,label``) are read by
``birdray.data.folders``; the layout is detected and recorded in the manifest.

The driver reads the metadata files and the image bytes (the source sits where the driver runs:
on a cluster the workers cannot see it) and assigns splits; Ray Data tasks validate, decode and
(optionally) shrink the images in parallel and write shards partitioned by split. Every listed
image ends either in a shard or in the manifest's quarantine list with a reason: the ids
reconcile as sets (each listed id exactly once, nothing unlisted), not only as counts. Shards go
to a fresh folder and the manifest is replaced atomically last, so readers never see a mix of
old and new shards, and a folder without a valid manifest is not a dataset.
The output may be a local folder or a bucket URI (``s3://bucket/cub``): Ray Data writes the
shards there directly and the manifest is one object written last.
``--feedback`` adds people's labelled answers (``birdray.data.feedback``) as extra train rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from dataclasses import dataclass

import numpy as np

from birdray import locks, storage
from birdray.config import field, to_dict
from birdray.data import feedback as fblib
from birdray.data import folders
from birdray.data.confined import image_path
from birdray.data.cub import CubDataset, CubRecord, read_cub
from birdray.data.download import DEFAULT_MAX_EXTRACT_GB, open_source
from birdray.data.duplicates import mark_duplicates
from birdray.data.ingest_report import empty_classes, reason_counts, report
from birdray.data.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    DatasetError,
    load_manifest,
    write_manifest,
)
from birdray.data.readback import collect_quarantine, reconcile, split_counts
from birdray.data.rows import SCHEMA, item_row, load_images, put_blocks
from birdray.data.write_guard import WriteError, held_open, quiet_output_failure, writing
from birdray.images import DEFAULT_MAX_PIXELS
from birdray.resources import watched_call
from birdray.runtime import init_ray

SPLITS = ("train", "val", "test")
DEFAULT_SOURCE = "data/raw/extracted"  # DownloadConfig.out + "/extracted"


@dataclass
class IngestConfig:
    source: str = field(
        DEFAULT_SOURCE,
        "CUB folder (or its parent) or CUB_200_2011.tgz, a CSV of path,label, or "
        "DIR/<species>/*.jpg; the default is where `birdray download` extracts",
    )
    out: str = field("data/cub_parquet", "output folder or bucket URI: shards + manifest.json")
    val_fraction: float = field(0.1, "share of each class's train images kept for val")
    test_fraction: float = field(
        0.2, "share of each class held out for test (own-photo layouts; CUB keeps its split)"
    )
    seed: int = field(0, "seed of the stratified val (and test) split")
    max_side: int = field(0, "re-encode images whose longer side exceeds this (0 keeps originals)")
    max_pixels: int = field(DEFAULT_MAX_PIXELS, "larger images are quarantined as bombs")
    max_file_mb: float = field(50.0, "larger files are quarantined without being read")
    rows_per_shard: int = field(256, "upper bound of rows per Parquet file (keeps blocks small)")
    md5: str = field("", "expected MD5 when the source is an archive (none: it is printed)")
    max_extract_gb: float = field(
        DEFAULT_MAX_EXTRACT_GB, "refuse archives that would unpack to more than this many GB"
    )
    stall_timeout_s: float = field(
        300.0, "stop with Ray's pending-resource view when no shard is written this long (0: never)"
    )
    force: bool = field(False, "re-ingest even if the manifest says this source is done")
    feedback: str = field(
        "", "feedback folder or URI (serve's feedback_dir): labelled answers become train rows"
    )
    address: str = field("", "Ray address (empty: join RAY_ADDRESS or start a local Ray)")


def assign_splits(records: list[CubRecord], val_fraction: float, seed: int) -> dict[int, str]:
    """Official test stays test; per class, a seeded ``val_fraction`` of train becomes val."""
    by_class: dict[int, list[int]] = {}
    split = {}
    for rec in records:
        if rec.is_train:
            by_class.setdefault(rec.label, []).append(rec.image_id)
        split[rec.image_id] = "train" if rec.is_train else "test"
    for label, ids in sorted(by_class.items()):
        ids = sorted(ids)
        n_val = int(round(len(ids) * val_fraction)) if val_fraction > 0 else 0
        if val_fraction > 0 and len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        rng = np.random.default_rng([seed, label])
        for idx in rng.permutation(len(ids))[:n_val]:
            split[ids[idx]] = "val"
    return split


def source_fingerprint(cub: CubDataset) -> str:
    """Hash of the metadata files and each image's path and size: changes when the source does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in cub.root.rglob("*.txt") if p.is_file()):
        digest.update(str(path.relative_to(cub.root)).encode(errors="surrogateescape"))
        digest.update(path.read_bytes())
    for rec in cub.records:
        image = image_path(cub.root, rec.rel_path)  # never stat a path outside the source
        stamp = storage.file_stamp(image)
        digest.update(f"{rec.rel_path}\0{stamp}\n".encode(errors="surrogateescape"))
    return digest.hexdigest()


def ingest_and_report(cfg: IngestConfig) -> str:
    """``birdray ingest``: ``run_ingest``, then what was kept, quarantined (why) and skipped."""
    manifest_path = run_ingest(cfg)
    print(report(manifest_path), flush=True)
    return manifest_path


def run_ingest(cfg: IngestConfig) -> str:
    """Ingest CUB into ``cfg.out``; returns the manifest's location (unchanged if up to date).

    One ingest at a time into an output on this machine: a finishing ingest deletes the shard
    folders its manifest does not name, which would include another run's, still being written.
    A second waits (and says so), then finds the first's manifest and reuses it if it matches.
    """
    out = storage.absolute(cfg.out)
    lock = locks.machine_lock_file("ingest", out)
    with (
        locks.file_lock(lock, waiting_for=f"another ingest into {out}"),
        contextlib.ExitStack() as held,  # the output folders, open while they are written
    ):
        return _ingest(cfg, held)


def _ingest(cfg: IngestConfig, held: contextlib.ExitStack) -> str:
    import ray

    started = time.time()
    source = open_source(cfg.source, cfg.md5, cfg.max_extract_gb)
    layout = folders.find_layout(source)
    if layout == "cub":
        cub = read_cub(source)
        fingerprint, images_dir = source_fingerprint(cub), cub.root / "images"
    else:
        cub = folders.read_layout(source, layout)
        fingerprint = folders.fingerprint(cub, source if layout == "csv" else None)
        images_dir = cub.root
    out = storage.absolute(cfg.out)
    manifest_path = storage.join(out, MANIFEST_FILE)
    ignored = ("out", "force", "address", "source", "max_extract_gb", "stall_timeout_s", "feedback")
    ignored += ("test_fraction",) if layout == "cub" else ()  # CUB keeps its official test split
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ignored}
    feedback_digest = fblib.source_digest(cfg.feedback) if cfg.feedback else ""
    if not cfg.force:
        try:
            old = load_manifest(out)
            same_feedback = (old.get("feedback") or {}).get("source_digest", "") == feedback_digest
            if (
                old["source"]["checksum"] == fingerprint
                and old["ingest_config"] == settings
                and same_feedback
            ):
                print(f"already ingested (manifest matches the source): {manifest_path}")
                return manifest_path
        except ValueError:
            pass  # no manifest, or not a valid one: ingest
    max_bytes = int(cfg.max_file_mb * 2**20)
    if layout == "cub":
        split = assign_splits(cub.records, cfg.val_fraction, cfg.seed)
    else:  # copies kept once, before splitting: no split may hold the same bytes twice
        mark_duplicates(cub, max_bytes)
        usable = [rec for rec in cub.records if not rec.problems]
        split = folders.assign_splits(usable, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    # a record already known bad is quarantined whatever its split says
    items = [item_row(rec, split.get(rec.image_id, "train")) for rec in cub.records]
    if not items:
        raise ValueError(f"{source} lists no images: nothing to ingest")
    # Shards come out class-mixed, so a shard-local shuffle while training sees many classes.
    items = [items[i] for i in np.random.default_rng(cfg.seed).permutation(len(items))]

    init_ray(cfg.address or None)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    # No manifest points here until the end, so an interrupted run's folder is never read.
    shards_name = f"shards-{run_id}"
    shards = storage.join(out, shards_name)
    with writing(out):
        storage.make_dirs(shards)  # made here, not by Ray Data: it is known if it is replaced
    changed = held.enter_context(held_open(out, shards))
    batch = 32
    rows_per_block = block_rows(len(items), ray.cluster_resources().get("CPU", 1))
    hashes: dict[str, str] | None = {} if cfg.feedback else None
    blocks = put_blocks(items, images_dir, rows_per_block, hashes, max_bytes)
    feedback = None
    if cfg.feedback:  # after the source's bytes are read: their hashes say what is a duplicate
        first_id = max(item["image_id"] for item in items) + 1
        extra, feedback = fblib.feedback_items(
            storage.absolute(cfg.feedback), cub.class_names, first_id, hashes or {}
        )
        blocks += put_blocks(extra, images_dir, rows_per_block)
        items += extra

    def write_shards() -> None:
        # from_arrow_refs already runs (1-CPU) metadata tasks, so it is watched too
        ds = ray.data.from_arrow_refs(blocks).map_batches(
            load_images,
            batch_size=batch,
            batch_format="numpy",
            zero_copy_batch=True,
            fn_kwargs={"max_side": cfg.max_side, "max_pixels": cfg.max_pixels},
        )
        ds.write_parquet(shards, partition_cols=["split"], max_rows_per_file=cfg.rows_per_shard)

    written_files = lambda: storage.count_files(shards, ".parquet")  # noqa: E731
    with writing(out, changed):
        with quiet_output_failure():
            watched_call(write_shards, written_files, cfg.stall_timeout_s, "ingest")
        quarantine = collect_quarantine(shards)  # leaves only the split=train/val/test folders
        splits, content_checksum, written = (
            split_counts(shards) if storage.child_dirs(shards) else ({}, "", [])
        )
    ingested = len(written)
    try:
        reconcile(
            [item["image_id"] for item in items], written, [q["image_id"] for q in quarantine]
        )
    except RuntimeError as exc:
        gone = changed()  # deleted or replaced while Ray wrote into it (Ray made it again)
        storage.delete_dir(shards)
        if gone:
            raise WriteError(
                f"--out {out} was deleted or replaced while the ingest wrote to it (its shards"
                f" no longer hold all {len(items)} images written); run the ingest again"
            ) from exc
        raise
    if not ingested:  # not a dataset: say why in one line, and leave no manifest claiming one
        storage.delete_dir(shards)
        first = quarantine[0] if quarantine else {"path": "-", "reason": "-"}
        raise DatasetError(
            f"{cfg.source}: none of the {len(items)} listed images is usable "
            f"({reason_counts(quarantine)}; e.g. {first['path']}: {first['reason']}); "
            "nothing was written"
        )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.time(),
        "shards_dir": shards_name,
        "source": {"path": str(cfg.source), "root": str(cub.root), "checksum": fingerprint},
        "layout": layout,  # cub | csv | folders (the last two: no boxes, parts or attributes)
        "ingest_config": settings,
        "counts": {"listed": len(items), "ingested": ingested, "quarantined": len(quarantine)},
        "splits": splits,
        "content_checksum": content_checksum,
        "class_names": cub.class_names,
        "part_names": cub.part_names,
        "attribute_names": cub.attribute_names,
        "columns": [f.name for f in SCHEMA if f.name != "split"],
        "quarantine": quarantine,
        "warnings": cub.warnings + empty_classes(cub.class_names, splits),
        **({"feedback": fblib.finish(feedback, quarantine)} if feedback else {}),
        "seconds": round(time.time() - started, 2),
    }
    with writing(out, changed):
        write_manifest(out, manifest)
        for name in storage.child_dirs(out):  # only now is it safe to drop what the old one named
            if name != shards_name and name.startswith(("shards-", ".staging-")):
                storage.delete_dir(storage.join(out, name))
    return manifest_path


def block_rows(items: int, cpus: float, per_cpu: int = 2, largest: int = 1024) -> int:
    """Rows per block (one block is one validate-and-write task): ~``per_cpu`` per CPU.

    Each task costs Ray ~0.15 s beyond its work on 2 cores (lease, dispatch, the executor's
    turn), so tiny blocks spend more time being scheduled than decoding: 11,800 images took
    9.7 s in 256-row blocks, 6.2 s in 512 and 5.6 s in 1,024. ``largest`` bounds the block the
    driver holds while reading (~100 MB of CUB photos); files stay ``rows_per_shard`` rows.
    """
    wanted = -(-items // max(1, int(cpus * per_cpu)))
    return max(32, min(wanted, largest))
