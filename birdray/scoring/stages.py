"""The two Ray Data stages: decode + preprocess in CPU tasks, the model in an actor pool.

Every listed file leaves both stages as exactly one row: the CPU stage (``birdray.scoring.decode``)
turns each into a uint8 crop or an error, and the actor passes errors through untouched while it
normalises the crops, so the pixels the model sees are the model's own eval transform.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from birdray.images import DEFAULT_MAX_PIXELS
from birdray.runtime import init_ray
from birdray.scoring.decode import MISSING, prepare_batch
from birdray.scoring.sources import Source
from birdray.serve.metrics import ScoreMetrics

TOP_K_TYPE = pa.list_(
    pa.struct([("label", pa.int32()), ("species", pa.string()), ("probability", pa.float64())])
)
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("ok", pa.bool_()),
        ("error", pa.string()),
        ("label", pa.int32()),
        ("species", pa.string()),
        ("confidence", pa.float64()),
        ("top_k", TOP_K_TYPE),
        ("model_version", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("image_id", pa.int64()),  # dataset input: the ingest's image id
        ("file_size", pa.int64()),  # with mtime_ns: tells --resume whether a file changed
        ("mtime_ns", pa.int64()),
        ("node_id", pa.string()),  # where the scoring actor ran (GPU placement is checkable)
        ("device", pa.string()),
    ]
)
# Rows per Ray task (a block) in both stages; the actor still calls the model per batch. Each
# task costs the driver's scheduler, the raylet and the worker ~1 ms whatever its size: at 16
# rows that was ~2.5 ms of CPU an image on 2 cores (steady state 141-153 img/s), at 128 ~1
# (178-214 img/s, the model alone 249). Blocks of 128 crops are 6 MiB at 128 px, 77 at 448.
TASK_ROWS = 128


class Scorer:
    """Actor: one model per actor, calibrated top-k for the rows that decoded (or, for
    ``evaluate``, raw logits: the same two stages score a test split)."""

    def __init__(
        self,
        package: dict[str, Any],
        top_k: int,
        num_threads: int,
        amp: bool,
        logits: bool = False,
        reserved_cpus: float = 1.0,
        sharing: int = 1,
    ):
        import ray

        from birdray.model.factory import auto_threads
        from birdray.model.inference import Predictor
        from birdray.model.package import load_package_files

        files = ray.get(package["ref"])  # the package bytes: no path the driver sees is needed
        # Predictor sets torch's thread count: Ray set OMP_NUM_THREADS=1 in this actor; unset
        # (0), this node's cores shared by the pool's actors on it
        self.predictor = Predictor(
            load_package_files(files, package["name"], verified=True),
            num_threads=num_threads or auto_threads(reserved_cpus, sharing),
            amp=amp,
        )
        self.top_k, self.logits = top_k, logits
        self.node_id = ray.get_runtime_context().get_node_id()
        self.device = str(self.predictor.device)
        self.metrics = ScoreMetrics(self.predictor.version)

    def _normalized(self, pixels: np.ndarray):
        import torch

        return self.predictor.from_uint8(torch.from_numpy(pixels))

    def score(self, pixels: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"label": p.label, "species": p.species, "confidence": p.confidence, "top_k": p.top_k}
            for p in self.predictor.predict_tensor(self._normalized(pixels), self.top_k)
        ]

    def raw_logits(self, batch: dict[str, np.ndarray], errors: list[str], ok: np.ndarray) -> dict:
        """Evaluation's mode: each row's raw logits (NaN for a file that failed), no top-k."""
        out = np.full((len(errors), self.predictor.metadata.num_classes), np.nan, np.float32)
        if ok.any():
            out[ok] = self.predictor.logits(self._normalized(batch["pixels"][ok])).numpy()
        self.metrics.rows(errors)
        return {"image_id": batch["image_id"], "error": np.array(errors, object), "logits": out}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        errors = [str(e) for e in batch["error"]]
        ok = np.array([not e for e in errors], dtype=bool)
        if self.logits:
            return self.raw_logits(batch, errors, ok)
        scored = iter(self.score(batch["pixels"][ok]) if ok.any() else [])
        empty = {"label": None, "species": None, "confidence": None, "top_k": None}
        preds = [next(scored) if good else empty for good in ok]

        def col(name: str) -> list:
            return [None if v == MISSING else int(v) for v in batch[name]]

        n = len(errors)
        self.metrics.rows(errors)
        return pa.table(
            {
                "path": [str(p) for p in batch["path"]],
                "ok": ok.tolist(),
                "error": [e or None for e in errors],
                "label": [p["label"] for p in preds],
                "species": [p["species"] for p in preds],
                "confidence": [p["confidence"] for p in preds],
                "top_k": [p["top_k"] for p in preds],
                "model_version": [self.predictor.version] * n,
                "width": col("width"),
                "height": col("height"),
                "image_id": col("image_id"),
                "file_size": col("file_size"),
                "mtime_ns": col("mtime_ns"),
                "node_id": [self.node_id] * n,
                "device": [self.device] * n,
            },
            schema=SCHEMA,
        )


@dataclass(frozen=True)
class StagePlan:
    """The two stages' shape: ``birdray score``'s flags, or evaluation's own choice."""

    batch_size: int
    pool_size: int
    actor_cpus: float
    num_gpus: float = 0.0
    preprocess_cpus: float = 1.0
    preprocess_memory_mb: int = 768
    torch_threads: int = 0  # 0: on CPU, the node's cores shared by the actors on it
    max_file_mb: float = 50.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    top_k: int = 5
    amp: bool = False

    @classmethod
    def of(cls, cfg: Any) -> StagePlan:
        """The plan a config with these same field names asks for (``ScoreConfig``)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def build_dataset(
    source: Source,
    todo: pa.Table | None,
    plan: StagePlan,
    package: dict[str, Any],
    data_config_json: str,
    scorer_cls: type = Scorer,
    resumed: bool = False,
    scorer_kwargs: dict[str, Any] | None = None,
) -> Any:
    """The Ray Data pipeline: listed rows -> CPU decode/preprocess tasks -> model actor pool.
    ``scorer_kwargs``: more actor arguments (``evaluate`` asks for ``logits=True``)."""
    rows = listed_rows(source, todo, plan, resumed)
    return add_stages(rows, source, plan, package, data_config_json, scorer_cls, scorer_kwargs)


def listed_rows(source: Source, todo: pa.Table | None, plan: StagePlan, resumed: bool = False):
    """The rows to score as a Ray Dataset: a dataset split's shards, or the listed files."""
    import ray

    if source.kind == "dataset":
        from ray.data.expressions import col

        from birdray.data.manifest import read_parquet

        # listed and planned here: no listing task between the job's start and its first batch
        columns = ["image_id", "path", "image"]
        ds = read_parquet(source.split_dir, columns, list_once=True)
        if resumed:  # Arrow-native filter: only the rows still to score are decoded
            ds = ds.filter(expr=col("path").is_in(todo["path"].to_pylist()))
        # Parquet shards arrive as a few big blocks: task-sized blocks let every decode task
        # and every actor in the pool (on every node) take a share instead of one taking all
        return ds.repartition(target_num_rows_per_block=task_rows(plan))
    return ray.data.from_arrow([todo.slice(i, n) for i, n in block_slices(len(todo), plan)])


def task_rows(plan: StagePlan) -> int:
    return max(plan.batch_size, TASK_ROWS)


def block_slices(rows: int, plan: StagePlan) -> list[tuple[int, int]]:
    """(offset, length) of each block: one batch first, doubling up to ``task_rows`` (so the
    first results come after one batch's decode and forward), at most ~1,000 blocks in all."""
    full = max(task_rows(plan), math.ceil(rows / 1000))
    slices, start, size = [], 0, plan.batch_size
    while start < rows:
        slices.append((start, min(size, rows - start)))
        start, size = start + size, min(size * 2, full)
    return slices


def add_stages(
    rows: Any,
    source: Source,
    plan: StagePlan,
    package: dict[str, Any],
    data_config_json: str,
    scorer_cls: type = Scorer,
    scorer_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Decode + eval transform in CPU tasks, then the model in one actor pool, over ``rows``
    (one source's, or several dataset splits' unioned: one pool, one model load)."""
    import ray

    ds = rows.map_batches(
        prepare_batch,
        batch_size=None,  # a block a task: the blocks are task-sized (``listed_rows``)
        batch_format="pyarrow",
        num_cpus=plan.preprocess_cpus,
        # A reservation the actors do not share also keeps Ray from fusing this stage into the
        # actor pool: decoding stays in parallel CPU tasks, the actors only run the model.
        memory=max(1, plan.preprocess_memory_mb) * 2**20,
        udf_modifying_row_count=False,
        fn_kwargs={
            "source": source,
            "data_config_json": data_config_json,
            "max_bytes": int(plan.max_file_mb * 2**20),
            "max_pixels": plan.max_pixels,
        },
    )
    threads = plan.torch_threads or (max(1, math.ceil(plan.actor_cpus)) if plan.num_gpus else 0)
    return ds.map_batches(
        scorer_cls,
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.pool_size),
        num_cpus=plan.actor_cpus,
        num_gpus=plan.num_gpus or None,
        udf_modifying_row_count=False,
        fn_constructor_kwargs={
            "package": package,
            "top_k": plan.top_k,
            "num_threads": threads,
            "amp": plan.amp,
            "reserved_cpus": plan.actor_cpus,
            "sharing": actors_per_node(plan.pool_size),
            **(scorer_kwargs or {}),
        },
    )


def actors_per_node(actors: int) -> int:
    """How many of a pool's actors share a node, at most: Ray Data spreads its actors over the
    nodes with CPUs (its default scheduling strategy is SPREAD)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    return max(1, math.ceil(actors / max(1, len(nodes))))


def ship_package(package_path: Path, address: str = "") -> dict[str, Any]:
    """Put the package bytes in Ray's object store once: actors on any node load from there."""
    import ray

    from birdray.model.package import package_files

    init_ray(address or None)
    return {"ref": ray.put(package_files(package_path)), "name": str(package_path)}


def config_json(data: dict[str, Any]) -> str:

    return json.dumps(data, sort_keys=True)
