"""``birdray demo``: the whole system end to end on generated birds and a local Ray cluster.

Each stage calls the same function its own job calls (no demo-only code paths), and prints
where its results went. The Quickstart's first command runs this.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from birdray.config import field, from_dict, load_yaml
from birdray.demo_stages import consumers, done, feedback_loop, keep_serving, stage
from birdray.runtime import init_ray
from birdray.synth.job import SynthConfig, generate
from birdray.train.config import TrainConfig
from birdray.tune.config import SweepConfig
from birdray.tune.promote import register_winner


@dataclass
class DemoConfig:
    out: str = field("runs/demo", "everything the demo writes goes here")
    classes: int = field(10, "species to generate")
    per_class: int = field(40, "images per species (half train, half test, as in CUB)")
    seed: int = field(0, "seed for data and training")
    sweep_config: str = field("sweep_demo", "Tune sweep: a shipped recipe's name or a YAML file")
    train_config: str = field("demo", "training recipe: a shipped recipe's name or a YAML file")
    epochs: int = field(0, "override the recipe's epochs (0: keep)")
    address: str = field("", "Ray address (empty: a private local Ray on 127.0.0.1)")
    dashboard: bool = field(False, "leave Serve and the Streamlit dashboard running at the end")
    serve_proxy: str = field(
        "haproxy",
        "Serve's front door in a local Ray: haproxy (a Python hop less a request; its stats "
        "and exporter ports listen on all interfaces) | serve (Serve's proxy, all on loopback)",
    )


DEMO_WEIGHTS = "runs/demo/weights/tf_efficientnet_lite0.safetensors"  # as demo.yaml names them


def _recipe(cfg: DemoConfig, out: Path):

    recipe = from_dict(TrainConfig, load_yaml(cfg.train_config))
    weights = out / "weights" / "tf_efficientnet_lite0.safetensors"
    if recipe.pretrained_file == DEMO_WEIGHTS:  # the shipped recipe: converted into --out
        recipe.pretrained_file = str(weights)
    if recipe.pretrained_file and not Path(recipe.pretrained_file).is_file():
        from birdray.model.weights import convert_lite0

        recipe.pretrained_file = str(convert_lite0(weights))
    return replace(
        recipe,
        dataset=str(out / "dataset"),
        storage_path=str(out / "train"),
        seed=cfg.seed,
        epochs=cfg.epochs or recipe.epochs,
        name=f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
    )


def _sweep(cfg: DemoConfig, out: Path, registry: Path):

    sweep = from_dict(SweepConfig, load_yaml(cfg.sweep_config))
    return replace(
        sweep,
        dataset=str(out / "dataset"),
        storage_path=str(out / "tune"),
        registry=str(registry),
        name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
        seed=cfg.seed,
        address=cfg.address,
    )


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Generate birds, ingest, sweep, train, evaluate, promote, explain, serve, score."""
    from birdray.data.ingest import IngestConfig, run_ingest
    from birdray.data.ingest_report import summary
    from birdray.evaluate.job import EvaluateConfig, run_evaluation
    from birdray.registry import read_pointer
    from birdray.registry.versions import STALE_HOURS, clean_abandoned
    from birdray.serve.proxy import choose_proxy
    from birdray.train.job import run_training
    from birdray.tune.job import run_sweep

    out = Path(cfg.out).resolve()
    results: dict[str, Any] = {}
    if not cfg.address:
        choose_proxy(cfg.serve_proxy)  # Serve reads it from the local Ray started next
    resources = init_ray(cfg.address or None, num_cpus=4)  # local: dashboard + Jobs API on loopback
    print(f"Ray cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")

    t = stage("1. synth: generate a CUB-layout dataset")
    synth = SynthConfig(
        out=str(out / "synth"),
        classes=cfg.classes,
        per_class=cfg.per_class,
        seed=cfg.seed,
        min_side=160,
        max_side=256,
    )
    source = generate(synth)
    done(t, dataset=source / "CUB_200_2011")

    t = stage("2. ingest: Ray Data -> Parquet shards + manifest")
    manifest = run_ingest(
        IngestConfig(source=str(source), out=str(out / "dataset"), val_fraction=0.2, seed=cfg.seed)
    )
    done(t, manifest=manifest, summary=summary(manifest))

    registry = out / "registry"
    t = stage("3. tune: compare two architectures with Ray Tune, promote the winner")
    sweep = run_sweep(_sweep(cfg, out, registry))
    done(
        t,
        report=sweep["report"],
        winner=f"{sweep['arch']} ({sweep['best_trial']})",
        registry=sweep.get("registry"),
    )

    t = stage("4. train: fine-tune ImageNet weights with Ray Train, 2 data-parallel workers")
    recipe = _recipe(cfg, out)
    trained = run_training(recipe)
    best = trained["best"]
    done(
        t,
        package=trained["package"],
        curves=Path(trained["run_dir"]) / "train_val_losses.png",
        best=f"val top-1 {best['val_top1']:.3f} at epoch {best['epoch']}",
        # bf16 on a CPU with bf16 instructions, as on GPUs (README: Train)
        steps=f"{trained['last'].get('precision', 'fp32')}, "
        f"{trained['last'].get('images_per_s', 0):.1f} img/s in the last epoch",
    )

    t = stage("5. evaluate: test split, calibration")
    evaluation = run_evaluation(EvaluateConfig(model=trained["package"], dataset=recipe.dataset))
    done(
        t,
        report=evaluation["report"],
        metrics=(
            f"test top-1 {evaluation['test_top1']:.3f}, top-5 {evaluation['test_top5']:.3f}, "
            f"ECE {evaluation['ece_before']:.3f} -> {evaluation['ece_after']:.3f} "
            f"(T={evaluation['temperature']:.2f})"
        ),
    )

    t = stage("5b. registry: register the fine-tune, promote it if it beats production")
    decision = register_winner(
        str(registry), Path(trained["package"]), {"run": recipe.name, "source": "demo"}, force=False
    )
    version = read_pointer(str(registry))["version"]
    leftovers = clean_abandoned(str(registry), STALE_HOURS)  # `registry clean`
    done(
        t,
        registry=registry,
        decision=decision["reason"],
        production=version,
        abandoned_registrations_removed=len(leftovers["removed"]),
    )
    results.update(
        package=trained["package"],
        registry=str(registry),
        version=version,
        evaluation=evaluation,
        sweep=sweep["report"],
    )
    results.update(consumers(cfg, out, registry, synth, recipe.dataset))
    results["loop"] = feedback_loop(recipe, source, registry, out, results.pop("answers"))
    print("\nDemo finished: everything is under", out, "\nNext, on the demo's model:")
    for command in next_commands(out, registry, recipe.dataset, sweep["experiment"]):
        print("  " + command)
    if cfg.dashboard:
        keep_serving(results.pop("app"), registry, out, out / "scored", sweep["experiment"])
    return results


def next_commands(out: Path, registry: Path, dataset: str, sweep_dir: str) -> list[str]:
    """The demo's registry stays under ``out`` (it never touches ``runs/registry``), so the
    follow-up commands name it; they are printed to be copied as they are."""
    reg = ["--registry", str(registry)]
    commands = [
        ["serve", *reg],  # http://127.0.0.1:8000, the dashboard's default --serve-url
        ["score", "--input", str(out / "score_input"), "--output", str(out / "scored"),
         "--overwrite", "true", *reg],
        ["dashboard", *reg, "--sweep-dir", sweep_dir, "--score-dir", str(out / "scored")],
        ["evaluate", "--dataset", dataset, "--model", "production", *reg],
        ["feedback", "report", *reg, "--model", "production"],
    ]  # fmt: skip
    return [shlex.join(["birdray", *c]) for c in commands]
