"""Pre-flight of the jobs that use a model: registry, serve, score, explain, dashboard, demo."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from birdray import config as cfglib
from birdray import storage
from birdray.checks.common import (
    ALIAS_RE,
    choice,
    dataset,
    device,
    exists,
    file,
    full_path,
    model,
    output,
    port,
    positive,
    require,
    url,
)
from birdray.config import ConfigError, UsageError, config_path, recipe_names


def registry(cfg: Any) -> None:
    from birdray.registry.cli import ACTIONS

    choice("action", cfg.action, ACTIONS)
    require(bool(cfg.registry), "--registry", "is required (a registry folder or URI)")
    words = list(cfg.args or [])
    if cfg.action == "add":  # the registry may not exist yet: add creates it
        require(len(words) == 1, "add", f"takes one model package folder, got {words}")
        output("--registry", cfg.registry)  # a file, or a path under one: one line
        exists("add", words[0], "a model package folder")
        if not storage.is_remote(words[0]):
            model(words[0], None, "add")
        return
    if not storage.is_remote(cfg.registry):
        require(
            storage.local_path(cfg.registry).is_dir(),
            "--registry",
            f"no registry at {full_path(cfg.registry)} (train with --registry, or 'birdray "
            "registry add PACKAGE', to create one)",
        )
    if cfg.action == "alias":  # alias list | alias set NAME REF
        _alias_words(cfg.registry, words)
        return
    takes = 1 if cfg.action in ("show", "promote") else 0
    require(len(words) <= takes, cfg.action, f"takes {takes or 'no'} word(s), got {words}")
    ref = words[0] if words else cfg.version
    if cfg.action in ("show", "promote"):  # show: a broken entry is there to be looked at
        model(ref, cfg.registry, "--version", usable=cfg.action == "promote")
    elif cfg.action == "rollback":
        from birdray.registry import read_aliases, read_pointer

        require(ALIAS_RE.fullmatch(cfg.alias) is not None, "--alias", f"{cfg.alias!r} is no alias")
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


def _listenable(host: str, number: int, address: str | None) -> None:
    """The local Ray that ``birdray serve`` starts must be able to listen on --host:--port:
    taken, Serve's proxy failed ~40 s later with Ray's tracebacks and a Python traceback here.
    Joining a cluster (--address, RAY_ADDRESS), or a Ray this process already runs, is left
    alone: its Serve may hold the port."""
    import socket
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return
    if (address or os.environ.get("RAY_ADDRESS")) not in (None, "", "local"):
        return
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, number, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise UsageError(f"--host: cannot resolve {host!r}: {exc}") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Serve's proxy binds
        try:
            sock.bind(where)
        except OSError as exc:
            raise UsageError(
                f"--port: cannot listen on {host}:{number} ({exc.strerror or exc}); stop what "
                "listens there, or pick another --port (0: a free one)"
            ) from exc


def serve(cfg: Any) -> None:
    port(cfg.port)
    _listenable(cfg.host, cfg.port, cfg.address)
    device(cfg.device, cfg.address)
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
    choice("--proxy", cfg.proxy, ("serve", "haproxy"))  # birdray.serve.proxy.PROXIES
    require(cfg.route_prefix.startswith("/"), "--route-prefix", "must start with '/'")
    require(bool(cfg.name.strip()), "--name", "the Serve application's name must not be empty")
    _app_bounds(cfg)
    _fits_here(cfg)
    model(cfg.model, cfg.registry)  # last: it may read the registry


def _fits_here(cfg: Any) -> None:
    """A local Ray's CPUs are known before it starts (``--num-cpus``, else what Ray would
    declare here): replicas that cannot fit them are refused now, not after Ray's start (~5 s).
    A cluster's resources, and GPUs (``--device auto``), are judged once Ray is up."""
    from birdray.devices import joins_cluster

    ray = sys.modules.get("ray")  # a Ray this process runs already is the one the job uses
    if joins_cluster(cfg.address) or (ray is not None and ray.is_initialized()):
        return
    from birdray.plan import local_cpus
    from birdray.resources import ResourceError
    from birdray.serve.app import app_args
    from birdray.serve.fit import plan_serve

    cpus = float(cfg.num_cpus) if cfg.num_cpus else float(local_cpus())
    try:
        plan_serve(app_args(cfg), {"CPU": cpus, "GPU": float("inf")})
    except ResourceError as exc:
        where = "--num-cpus" if cfg.num_cpus else f"this machine's {cpus:g} CPUs"
        raise UsageError(
            f"{exc} ({where}; lower the replicas' CPUs, e.g. --model-num-cpus)"
        ) from None


def _app_bounds(cfg: Any) -> None:
    """The app's own bounds (``check_bounds``, which the app applies again when it is built),
    said with the flags' names: they were tracebacks before Ray started."""
    from birdray.serve.app import app_args
    from birdray.serve.args import AppArgs, check_bounds

    args = app_args(cfg)
    try:
        check_bounds(cfglib.from_dict(AppArgs, args))
    except ValueError as exc:
        text = re.sub(
            r"\b(" + "|".join(sorted(args, key=len, reverse=True)) + r")\b",
            lambda found: "--" + found.group(1).replace("_", "-"),
            str(exc),
        )
        raise UsageError(text) from exc


def score(cfg: Any) -> None:
    from birdray.scoring.places import odd_bucket_path

    for flag, location in (("--input", cfg.input), ("--output", cfg.output)):
        odd = odd_bucket_path(location)  # the listing's paths are normalised, the flag's were not
        require(not odd, flag, odd)
    device(cfg.device, cfg.address)
    exists("--input", cfg.input, "an image folder, a bucket URI, or an ingested dataset")
    if not storage.is_remote(cfg.input):
        from birdray.data.manifest import is_dataset

        if is_dataset(cfg.input):
            dataset("--input", cfg.input, cfg.split)
    output("--output", cfg.output)
    from birdray.scoring.output import foreign
    from birdray.scoring.places import clash

    # the input itself or a folder holding it (results among the photos, the listing empty), and
    # a folder of someone else's files (a commit replaced their summary.json, review/ ...)
    require(not clash(cfg.output, cfg.input), "--output", clash(cfg.output, cfg.input))
    if not storage.is_remote(cfg.output):
        wrong = foreign(storage.local_path(cfg.output))
        require(not wrong, "--output", wrong)
    model(cfg.model, cfg.registry)
    positive({"--explain-lowest": cfg.explain_lowest}, 0)


def explain(cfg: Any) -> None:
    from birdray.explain.methods import METHODS

    device(cfg.device, None)
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


def explain_eval(cfg: Any) -> None:
    from birdray.explain.methods import METHODS

    dataset("--dataset", cfg.dataset, cfg.split)  # without part annotations: curves only
    names = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    require(bool(names), "--methods", f"name at least one of {', '.join(METHODS)}")
    for name in names:
        choice("--methods", name, METHODS)
    choice("--target", cfg.target, ("label", "predicted"))
    model(cfg.model, cfg.registry)
    positive({"--actors": cfg.actors, "--batch-size": cfg.batch_size})


def dashboard(cfg: Any) -> None:
    url("--serve-url", cfg.serve_url)
    url("--jobs-address", cfg.jobs_address)
    if cfg.job_runtime_env:
        file("--job-runtime-env", cfg.job_runtime_env, "a runtime_env YAML file")
    port(cfg.port)


def demo(cfg: Any) -> None:
    output("--out", cfg.out)
    for flag, path in (("--train-config", cfg.train_config), ("--sweep-config", cfg.sweep_config)):
        try:
            config_path(path)  # a YAML file, or a recipe shipped inside the package
        except ConfigError:
            file(flag, path, f"a YAML recipe or one of {', '.join(recipe_names())}")
    positive({"--classes": cfg.classes, "--per-class": cfg.per_class}, 2)
