"""Pre-flight checks: a user's mistake is found before Ray starts and said in one line.

``birdray <job>`` (and ``jobs/<job>.py``, the same code path) runs ``check(job, cfg)`` after the
flags are parsed and before the job function: missing paths, folders that are not datasets, model
references that do not resolve, values out of range. Each problem raises ``UsageError`` whose
message starts with the flag and says what was expected; ``birdray.cli.main`` prints it as one
line and exits with status 2. Without this, ``birdray serve --model /nonexistent`` started Ray and
Serve and failed a minute later with ``Deploying application birdray failed``.

Only what can be judged cheaply and without Ray is checked here: bucket paths are taken on trust
(reading them is the job's business), local paths are not.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.benchmark import STAGES
from birdray.config import ConfigError, UsageError, config_path, recipe_names
from birdray.data.cub import CubFormatError
from birdray.data.folders import LAYOUTS, find_layout, read_layout
from birdray.data.manifest import DatasetError, load_manifest
from birdray.devices import DEVICES, check_local

MODEL_HELP = "a model package folder, or production|latest|vNNNN|ALIAS with --registry"
# A registry alias (``candidate``, ``champion``), read with the registry's own alias reading.
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _abs(location: str) -> str:
    return location if storage.is_remote(location) else str(storage.local_path(location).resolve())


def require(ok: bool, flag: str, message: str) -> None:
    if not ok:
        raise UsageError(f"{flag}: {message}")


def exists(flag: str, location: str, what: str) -> None:
    """A local path must exist (a bucket path is the job's to read)."""
    require(bool(location), flag, f"is required ({what})")
    if not storage.is_remote(location):
        path = storage.local_path(location)
        require(path.exists(), flag, f"{_abs(location)} does not exist (expected {what})")


def file(flag: str, location: str, what: str) -> None:
    exists(flag, location, what)
    if not storage.is_remote(location):
        require(storage.local_path(location).is_file(), flag, f"{location} is not a file ({what})")


def output(flag: str, location: str) -> None:
    """An output location must be given, must not be an existing file, and its folder (or the
    nearest one that exists) must take a new file: a read-only mount or a folder the user may
    not write fails here, in a second, not after Ray has started and the job has run."""
    require(bool(location), flag, "is required (an output folder or bucket URI)")
    if storage.is_remote(location):
        return
    path = storage.local_path(location)
    require(not path.is_file(), flag, f"{location} is a file; expected a folder")
    nearest = next(p for p in (path, *path.parents) if p.exists())
    require(nearest.is_dir(), flag, f"{nearest} is a file, so {location} cannot be made")
    try:
        tempfile.TemporaryFile(dir=nearest).close()
    except OSError as exc:
        raise UsageError(
            f"{flag}: {location} cannot be written ({nearest}: {exc.strerror})"
        ) from None


def dataset(flag: str, location: str, split: str | None = None) -> dict[str, Any]:
    """An ingested dataset (a manifest with its shards); its manifest is returned."""

    exists(flag, location, "an ingested dataset folder (birdray ingest --out)")
    try:
        manifest = load_manifest(location)
    except DatasetError as exc:
        raise UsageError(f"{flag}: {exc}") from exc
    if split is not None:
        have = sorted(manifest.get("splits") or {})
        require(split in have, "--split", f"{location} has no {split!r} split (has {have})")
    return manifest


def model(model_ref: str, registry: str | None, flag: str = "--model") -> None:
    """``model_ref`` names a model package folder or a version the registry really has.

    The kind of reference comes from ``ModelRef`` (the one parser Serve, scoring and evaluation
    resolve with); only the registry's public functions are read.
    """
    from birdray.registry.ref import ModelRef

    parsed = ModelRef(model_ref, registry or "")
    ref, kind = parsed.name, parsed.kind
    if kind == "package":
        return
    if kind == "missing_path":
        path = Path(ref).expanduser()
        if path.is_dir():
            raise UsageError(
                f"{flag}: {_abs(ref)} is a folder but not a model package (no metadata.json); "
                f"expected {MODEL_HELP}"
            )
        raise UsageError(f"{flag}: {_abs(ref)} does not exist; expected {MODEL_HELP}")
    if kind == "invalid":
        raise UsageError(
            f"{flag}: {ref!r} is neither a folder, a version nor an alias; expected {MODEL_HELP}"
        )
    alias = kind == "alias" and ref != "production"
    if not registry:
        raise UsageError(
            f"{flag} {ref} names a registry version but no --registry was given "
            "(pass --registry PATH|URI, or --model PATH to a package folder)"
        )
    root = _abs(registry)
    if not storage.is_remote(registry) and not storage.local_path(registry).is_dir():
        raise UsageError(
            f"{flag} {ref}: no registry at {root} (--registry); pass --registry PATH to an "
            "existing registry, or --model PATH to a model package folder"
        )
    from birdray import registry as reglib  # imports torch: not at the CLI's start-up

    try:
        versions = reglib.list_versions(registry)
        aliases = reglib.read_aliases(registry) if alias or ref == "production" else {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"--registry: cannot read the registry at {root}: {exc}") from exc
    current = aliases.get(ref, {}).get("version")
    if alias:
        set_ = ", ".join(f"{k}={v['version']}" for k, v in aliases.items() if v.get("version"))
        require(
            bool(current),
            flag,
            f"the registry at {root} has no alias {ref!r} (set: {set_ or 'none'}); set it with "
            f"'birdray registry alias set {ref} vNNNN --registry {registry}'",
        )
    elif ref == "production":
        require(
            bool(current),
            flag,
            f"the registry at {root} has no production model yet (versions: "
            f"{', '.join(versions) or 'none'}); promote one with 'birdray registry promote "
            f"--version vNNNN --registry {registry}', or pass --model latest|vNNNN|PATH",
        )
    elif ref == "latest":
        require(bool(versions), flag, f"the registry at {root} is empty (train with --registry)")
    else:
        require(
            ref in versions,
            flag,
            f"the registry at {root} has no {ref} (it has: {', '.join(versions) or 'none'})",
        )


def positive(values: dict[str, float], minimum: float = 1) -> None:
    for flag, value in values.items():
        require(value >= minimum, flag, f"must be >= {minimum:g}, got {value:g}")


def choice(flag: str, value: str, options: tuple[str, ...] | list[str]) -> None:
    require(value in options, flag, f"{value!r} is not one of {', '.join(options)}")


def _url(flag: str, value: str) -> None:
    require(value.startswith(("http://", "https://")), flag, f"{value!r} is not an http(s) URL")


def _port(value: int) -> None:
    require(0 <= value <= 65535, "--port", f"{value} is not a port (0-65535; 0 picks one)")


def _md5(value: str) -> None:
    require(
        not value or re.fullmatch(r"[0-9a-fA-F]{32}", value) is not None,
        "--md5",
        f"{value!r} is not an MD5 (32 hex digits; empty skips the check)",
    )


# ---- one check per job ---------------------------------------------------------------------


def _synth(cfg: Any) -> None:
    output("--out", cfg.out)
    positive({"--classes": cfg.classes, "--per-class": cfg.per_class, "--min-side": cfg.min_side})
    require(cfg.min_side <= cfg.max_side, "--max-side", f"must be >= --min-side {cfg.min_side}")
    require(0.0 < cfg.test_fraction < 1.0, "--test-fraction", "must be between 0 and 1")
    positive({"--workers": cfg.workers}, 0)


def _download(cfg: Any) -> None:
    output("--out", cfg.out)
    require(
        cfg.url.startswith(("http://", "https://", "file://")),
        "--url",
        f"{cfg.url!r} is not an http(s):// or file:// URL",
    )
    if cfg.url.startswith("file://"):
        require(
            storage.local_path(cfg.url).is_file(),
            "--url",
            f"{storage.local_path(cfg.url)} is not a file (give the archive's absolute path)",
        )
    _md5(cfg.md5)
    require(cfg.timeout_s > 0, "--timeout-s", "must be > 0")
    require(
        math.isfinite(cfg.max_extract_gb) and cfg.max_extract_gb > 0,
        "--max-extract-gb",
        "must be > 0",
    )


def _ingest(cfg: Any) -> None:
    from birdray.data.ingest import DEFAULT_SOURCE

    local = None if storage.is_remote(cfg.source) else storage.local_path(cfg.source)
    if cfg.source == DEFAULT_SOURCE and local is not None and not local.exists():
        raise UsageError(
            f"--source: {_abs(cfg.source)} does not exist; `birdray download` puts CUB there, "
            f"or give --source ({LAYOUTS})"
        )
    exists("--source", cfg.source, LAYOUTS)
    if cfg.feedback:
        feedback_store(cfg.feedback)
    if local is not None and (local.is_dir() or local.suffix.lower() == ".csv"):
        try:
            layout = find_layout(local)
            if layout != "cub":  # a malformed line, case-only class names: before Ray starts
                read_layout(local, layout)
        except CubFormatError as exc:
            raise UsageError(f"--source: {exc}") from exc
    output("--out", cfg.out)
    require(0.0 <= cfg.val_fraction < 1.0, "--val-fraction", "must be in [0, 1)")
    require(0.0 <= cfg.test_fraction < 1.0, "--test-fraction", "must be in [0, 1)")
    require(
        cfg.val_fraction + cfg.test_fraction < 1.0,
        "--test-fraction",
        "--val-fraction + --test-fraction must be < 1 (something must be left to train on)",
    )
    positive({"--rows-per-shard": cfg.rows_per_shard, "--max-pixels": cfg.max_pixels})
    positive({"--max-side": cfg.max_side}, 0)
    require(cfg.max_file_mb > 0, "--max-file-mb", f"must be > 0, got {cfg.max_file_mb:g}")
    _md5(cfg.md5)


def _train(cfg: Any) -> None:
    if cfg.use_gpu:  # --device's advice does not fit train, which has no --device
        from birdray.devices import joins_cluster, local_gpus

        require(
            joins_cluster(cfg.address) or local_gpus() > 0,
            "--use-gpu",
            "this machine has no CUDA GPU (torch sees none); train on CPU with --no-use-gpu,"
            " --address a Ray cluster with GPUs, or see what the recipe needs with --dry-run",
        )
    manifest = dataset("--dataset", cfg.dataset)
    splits = manifest.get("splits") or {}
    require(
        bool(splits.get("train")) and bool(splits.get("val")),
        "--dataset",
        f"{cfg.dataset} needs non-empty train and val splits (has {sorted(splits)})",
    )
    if cfg.pretrained_file:
        file("--pretrained-file", cfg.pretrained_file, "a weights file (.safetensors or .pth)")
    if cfg.init_from:
        from birdray.model.errors import ModelError
        from birdray.model.package import check_fine_tune_source

        try:
            check_fine_tune_source(
                Path(cfg.init_from).expanduser(),
                cfg.arch,
                manifest.get("class_names") or [],
                cfg.dataset,
            )
        except ModelError as exc:
            raise UsageError(f"--init-from: {exc}") from None
    positive(
        {
            "--epochs": cfg.epochs,
            "--batch-size": cfg.batch_size,
            "--num-workers": cfg.num_workers,
            "--image-size": cfg.image_size,
        }
    )
    from birdray.train.config import short_of_one_batch

    short = short_of_one_batch(splits["train"]["rows"], cfg.batch_size, cfg.num_workers)
    require(not short, "--batch-size", short)
    require(cfg.cpus_per_worker > 0, "--cpus-per-worker", "must be > 0")
    require(cfg.data_cpus > 0, "--data-cpus", "must be > 0")
    require(cfg.lr > 0, "--lr", "must be > 0")
    choice("--placement-strategy", cfg.placement_strategy, ("PACK", "SPREAD", "STRICT_SPREAD"))
    output("--storage-path", cfg.storage_path)
    if cfg.registry and not storage.is_remote(cfg.registry):
        require(
            not storage.local_path(cfg.registry).is_file(),
            "--registry",
            f"{cfg.registry} is a file; expected a registry folder",
        )


def _tune(cfg: Any) -> None:
    """The search space and the shared train settings are checked by the sweep itself, before
    it starts Ray (``base_train_config``, ``search_space``: ConfigError, one line too)."""
    if cfg.train.get("use_gpu"):  # trials on a machine without CUDA would wait for GPUs forever
        from birdray.devices import joins_cluster, local_gpus

        require(
            joins_cluster(cfg.address) or local_gpus() > 0,
            "--train",
            "use_gpu: true but this machine has no CUDA GPU (torch sees none); run it on a GPU"
            " machine, --address a Ray cluster with GPUs, or set train: {use_gpu: false}"
            " (--dry-run shows what the sweep needs)",
        )
    manifest = dataset("--dataset", cfg.dataset)
    have = sorted(manifest.get("splits") or {})
    if (manifest.get("splits") or {}).get("train"):  # trials would train nothing, each of them
        from dataclasses import fields

        from birdray.train.config import TrainConfig, short_of_one_batch

        default = {f.name: f.default for f in fields(TrainConfig)}
        batch, workers = (cfg.train.get(k, default[k]) for k in ("batch_size", "num_workers"))
        if isinstance(batch, int) and isinstance(workers, int):  # else the sweep's own error
            short = short_of_one_batch(manifest["splits"]["train"]["rows"], batch, workers)
            require(not short, "--train", short.replace("--batch-size", "train: batch_size"))
    if cfg.registry:  # the winner is evaluated on it before it is registered
        require(cfg.eval_split in have, "--eval-split", f"{cfg.eval_split!r} is not in {have}")
    positive({"--epochs": cfg.epochs, "--num-samples": cfg.num_samples})
    positive({"--grace-period": cfg.grace_period})
    positive({"--reduction-factor": cfg.reduction_factor}, 2)
    output("--storage-path", cfg.storage_path)


def _device(device: str | None, address: str | None) -> None:
    """``--device`` is a known one, and cuda has a GPU where Ray will start (a remote cluster's
    GPUs are checked by the job once it has connected: ``devices.gpus_to_use``)."""

    if device is not None:
        choice("--device", device, DEVICES)
    check_local(device, address)


def _evaluate(cfg: Any) -> None:
    _device(cfg.device, cfg.address)
    require(bool(cfg.model or cfg.registry), "--model", f"is required ({MODEL_HELP})")
    model(cfg.model, cfg.registry)
    dataset("--dataset", cfg.dataset, cfg.split)
    if cfg.exclude_ids:
        _exclude_ids(cfg.exclude_ids, cfg.dataset, cfg.split)
    if cfg.out:
        output("--out", cfg.out)
    positive({"--batch-size": cfg.batch_size, "--actors": cfg.actors})


def _exclude_ids(path: str, location: str, split: str) -> None:
    """Every token an id, and some image of the split left to report on (one column read)."""
    import pyarrow.dataset as pads

    from birdray.data.manifest import split_path
    from birdray.evaluate.exclude import nothing_left, read_exclude_ids

    file("--exclude-ids", path, "a file of image ids")
    ids = read_exclude_ids(path)
    if ids and not storage.is_remote(location):
        fs, root = storage.filesystem(split_path(location, split))
        listed = pads.dataset(root, filesystem=fs, format="parquet").to_table(["image_id"])
        left = set(listed["image_id"].to_pylist()) - set(ids)
        require(bool(left), "--exclude-ids", nothing_left(path, split, len(ids), listed.num_rows))


def _registry(cfg: Any) -> None:
    from birdray.registry.cli import ACTIONS

    choice("action", cfg.action, ACTIONS)
    require(bool(cfg.registry), "--registry", "is required (a registry folder or URI)")
    words = list(cfg.args or [])
    if cfg.action == "add":  # the registry may not exist yet: add creates it
        require(len(words) == 1, "add", f"takes one model package folder, got {words}")
        exists("add", words[0], "a model package folder")
        if not storage.is_remote(words[0]):
            model(words[0], None, "add")
        return
    if not storage.is_remote(cfg.registry):
        require(
            storage.local_path(cfg.registry).is_dir(),
            "--registry",
            f"no registry at {_abs(cfg.registry)} (train with --registry, or 'birdray registry "
            "add PACKAGE', to create one)",
        )
    if cfg.action == "alias":  # alias list | alias set NAME REF
        _alias_words(cfg.registry, words)
        return
    takes = 1 if cfg.action in ("show", "promote") else 0
    require(len(words) <= takes, cfg.action, f"takes {takes or 'no'} word(s), got {words}")
    ref = words[0] if words else cfg.version
    if cfg.action in ("show", "promote"):
        model(ref, cfg.registry, "--version")
    elif cfg.action == "rollback":
        from birdray.registry import read_aliases, read_pointer

        require(ALIAS_RE.match(cfg.alias) is not None, "--alias", f"{cfg.alias!r} is no alias")
        history = read_pointer(cfg.registry, cfg.alias).get("history", [])
        set_ = ", ".join(read_aliases(cfg.registry)) or "none"
        require(
            bool(history),
            "rollback",
            f"nothing to roll back to: alias {cfg.alias!r} was never set (set: {set_})",
        )
        require(len(history) >= 2, "rollback", f"nothing to roll back to (history {history})")


def _alias_words(registry: str, words: list[str]) -> None:
    from birdray.registry.versions import RegistryError, check_alias

    usage = "alias list | alias set NAME REF"
    if words in ([], ["list"]):
        return
    require(words[0] == "set" and len(words) == 3, "alias", f"expected {usage}, got {words}")
    try:
        check_alias(words[1])
    except RegistryError as exc:
        raise UsageError(f"alias: {exc}") from exc
    model(words[2], registry, "alias set")


def _listenable(host: str, port: int, address: str | None) -> None:
    """The local Ray that ``birdray serve`` starts must be able to listen on --host:--port:
    taken, Serve's proxy failed ~40 s later with Ray's tracebacks and a Python traceback here.
    Joining a cluster (--address, RAY_ADDRESS) is left alone: its Serve may hold the port."""
    import socket

    if not port or (address or os.environ.get("RAY_ADDRESS")) not in (None, "", "local"):
        return
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise UsageError(f"--host: cannot resolve {host!r}: {exc}") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Serve's proxy binds
        try:
            sock.bind(where)
        except OSError as exc:
            raise UsageError(
                f"--port: cannot listen on {host}:{port} ({exc.strerror or exc}); stop what "
                "listens there, or pick another --port (0: a free one)"
            ) from exc


def _serve(cfg: Any) -> None:
    _port(cfg.port)
    _listenable(cfg.host, cfg.port, cfg.address)
    _device(cfg.device, cfg.address)
    if cfg.api_key_env:
        require(
            bool(os.environ.get(cfg.api_key_env)),
            "--api-key-env",
            f"environment variable {cfg.api_key_env} is unset or empty; set it to the API "
            "key, or leave --api-key-env out to serve without one on loopback",
        )
    positive(
        {
            "--max-batch-size": cfg.max_batch_size,
            "--max-files": cfg.max_files,
            "--ingress-replicas": cfg.ingress_replicas,
            "--max-replicas": cfg.max_replicas,
        }
    )
    require(cfg.min_replicas <= cfg.max_replicas, "--min-replicas", "must be <= --max-replicas")
    model(cfg.model, cfg.registry)  # last: it may read the registry


def _score(cfg: Any) -> None:
    _device(cfg.device, cfg.address)
    exists("--input", cfg.input, "an image folder, a bucket URI, or an ingested dataset")
    if not storage.is_remote(cfg.input):
        from birdray.data.manifest import is_dataset

        if is_dataset(cfg.input):
            dataset("--input", cfg.input, cfg.split)
    output("--output", cfg.output)
    if not storage.is_remote(cfg.output) and not storage.is_remote(cfg.input):
        require(
            _abs(cfg.output) != _abs(cfg.input),
            "--output",
            "must not be the --input folder itself (use a subfolder)",
        )
    model(cfg.model, cfg.registry)
    positive({"--explain-lowest": cfg.explain_lowest}, 0)


def feedback_store(location: str) -> None:
    """A feedback store that exists and is one: a plain file or an ingested dataset given as
    ``--feedback`` is said here (its parts' contents are the store reader's to judge)."""
    from birdray.feedback.store import EXPECTED, location_problem

    exists("--feedback", location, EXPECTED)
    problem = None if storage.is_remote(location) else location_problem(location)
    require(problem is None, "--feedback", problem or "")


def _feedback(cfg: Any) -> None:
    feedback_store(cfg.feedback or storage.join(cfg.registry, "feedback"))
    if cfg.model:
        model(cfg.model, cfg.registry)
    if cfg.out and not storage.is_remote(cfg.out):
        require(not storage.local_path(cfg.out).is_dir(), "--out", f"{cfg.out} is a folder")


def _explain(cfg: Any) -> None:
    from birdray.explain.methods import METHODS

    _device(cfg.device, None)
    if cfg.dataset:
        given = cfg.image_id is not None
        require(given, "--image-id", "is required with --dataset (CUB ids start at 1)")
        require(cfg.image_id >= 1, "--image-id", f"CUB image ids start at 1, got {cfg.image_id}")
        dataset("--dataset", cfg.dataset)
    else:
        require(bool(cfg.image), "--image", "give --image PATH, or --dataset DIR --image-id N")
        file("--image", cfg.image, "an image file")
    output("--out", cfg.out)
    names = list(METHODS) if cfg.method.strip() == "all" else cfg.method.split(",")
    for name in names:
        choice("--method", name.strip(), (*METHODS, "all", "default"))
    model(cfg.model, cfg.registry)


def _explain_eval(cfg: Any) -> None:
    from birdray.explain.methods import METHODS

    dataset("--dataset", cfg.dataset, cfg.split)  # without part annotations: curves only
    names = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    require(bool(names), "--methods", f"name at least one of {', '.join(METHODS)}")
    for name in names:
        choice("--methods", name, METHODS)
    choice("--target", cfg.target, ("label", "predicted"))
    model(cfg.model, cfg.registry)
    positive({"--actors": cfg.actors, "--batch-size": cfg.batch_size})


def _dashboard(cfg: Any) -> None:
    _url("--serve-url", cfg.serve_url)
    _url("--jobs-address", cfg.jobs_address)
    if cfg.job_runtime_env:
        file("--job-runtime-env", cfg.job_runtime_env, "a runtime_env YAML file")
    _port(cfg.port)


def _demo(cfg: Any) -> None:
    output("--out", cfg.out)
    for flag, path in (("--train-config", cfg.train_config), ("--sweep-config", cfg.sweep_config)):
        try:
            config_path(path)  # a YAML file, or a recipe shipped inside the package
        except ConfigError:
            file(flag, path, f"a YAML recipe or one of {', '.join(recipe_names())}")
    positive({"--classes": cfg.classes, "--per-class": cfg.per_class}, 2)


def _benchmark(cfg: Any) -> None:
    from birdray.benchmark import effective

    cfg = effective(cfg)  # the sizes that will run (--smoke fills what was not given)
    choice("stage", cfg.stage, STAGES)
    choice("--device", cfg.device, ("cpu", "cuda"))
    choice("--serve-proxy", cfg.serve_proxy, ("serve", "haproxy"))
    output("--out", cfg.out)
    positive(
        {
            "--classes": cfg.classes,
            "--per-class": cfg.per_class,
            "--repeats": cfg.repeats,
            "--scaling-per-class": cfg.scaling_per_class,
            "--image-size": cfg.image_size,
            "--batch-size": cfg.batch_size,
            "--threads": cfg.threads,
            "--requests": cfg.requests,
            **{f"--scales {v}": v for v in cfg.scales},
            **{f"--concurrency {v}": v for v in cfg.concurrency},
            **{f"--explain-sizes {v}": v for v in cfg.explain_sizes},
        }
    )
    require(
        len(set(cfg.concurrency)) == len(cfg.concurrency) and bool(cfg.concurrency),
        "--concurrency",
        f"needs distinct levels, got {cfg.concurrency}",
    )
    require(
        cfg.requests >= max(cfg.concurrency),
        "--requests",
        f"{cfg.requests} requests cannot keep {max(cfg.concurrency)} in flight (--concurrency)",
    )
    if cfg.device == "cuda":
        import torch

        require(torch.cuda.is_available(), "--device", "cuda asked for, but no CUDA GPU here")
    if cfg.stage in ("train", "all"):
        train, val = _split_sizes(cfg.classes, cfg.per_class)
        require(
            train >= cfg.batch_size and val > 0,
            "--per-class",
            f"{cfg.classes} x {cfg.per_class} images give {train} train and {val} val images; "
            f"training needs a batch ({cfg.batch_size}) of train images and some val images",
        )


def _split_sizes(classes: int, per_class: int) -> tuple[int, int]:
    """Train and val images of a generated benchmark set, split as ingest will split it."""
    from birdray.data.cub import CubRecord
    from birdray.data.folders import assign_splits
    from birdray.data.ingest import IngestConfig

    records = [
        CubRecord(c * per_class + i + 1, "", c, "", True)
        for c in range(classes)
        for i in range(per_class)
    ]
    ingest = IngestConfig()
    split = assign_splits(records, ingest.val_fraction, ingest.test_fraction, ingest.seed)
    values = list(split.values())
    return values.count("train"), values.count("val")


CHECKS: dict[str, Callable[[Any], None]] = {
    "synth": _synth,
    "download": _download,
    "ingest": _ingest,
    "train": _train,
    "tune": _tune,
    "evaluate": _evaluate,
    "registry": _registry,
    "serve": _serve,
    "score": _score,
    "feedback": _feedback,
    "explain": _explain,
    "explain-eval": _explain_eval,
    "dashboard": _dashboard,
    "demo": _demo,
    "benchmark": _benchmark,
}


def check(job: str, cfg: Any) -> None:
    """Raise ``UsageError`` (flag first, one line) if ``cfg`` cannot work; nothing is started."""
    validate = CHECKS.get(job)
    if validate is not None:
        validate(cfg)
