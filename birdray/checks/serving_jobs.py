"""Pre-flight of the jobs that use a model: registry, serve, score, explain, dashboard, demo."""

from __future__ import annotations

import os
from typing import Any

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
from birdray.config import ConfigError, config_path, recipe_names


def registry(cfg: Any) -> None:
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
            f"no registry at {full_path(cfg.registry)} (train with --registry to create one)",
        )
    ref = words[0] if words and cfg.action in ("show", "promote") else cfg.version
    if cfg.action in ("show", "promote"):
        model(ref, cfg.registry, "--version")
    elif cfg.action == "rollback":
        from birdray.registry import read_pointer

        require(ALIAS_RE.match(cfg.alias) is not None, "--alias", f"{cfg.alias!r} is no alias")
        history = read_pointer(cfg.registry, cfg.alias).get("history", [])
        require(len(history) >= 2, "rollback", f"nothing to roll back to (history {history})")


def serve(cfg: Any) -> None:
    port(cfg.port)
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
    model(cfg.model, cfg.registry)  # last: it may read the registry


def score(cfg: Any) -> None:
    device(cfg.device, cfg.address)
    exists("--input", cfg.input, "an image folder, a bucket URI, or an ingested dataset")
    if not storage.is_remote(cfg.input):
        from birdray.data.manifest import is_dataset

        if is_dataset(cfg.input):
            dataset("--input", cfg.input, cfg.split)
    output("--output", cfg.output)
    if not storage.is_remote(cfg.output) and not storage.is_remote(cfg.input):
        require(
            full_path(cfg.output) != full_path(cfg.input),
            "--output",
            "must not be the --input folder itself (use a subfolder)",
        )
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
