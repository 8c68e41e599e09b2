"""``birdray demo``: the whole system end to end on generated birds and a local Ray cluster.

Each stage calls the same function its own job calls (no demo-only code paths), and prints
where its results went. The Quickstart's first command runs this.
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from birdray.config import field, from_dict, load_yaml


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


DEMO_WEIGHTS = "runs/demo/weights/tf_efficientnet_lite0.safetensors"  # as demo.yaml names them


def _one_sibling_pair(package: Path) -> str:
    """One sibling pair's contrastive result, spelled out (the table holds every pair)."""
    try:
        contrast = json.loads((package / "explain" / "contrastive.json").read_text())
    except (OSError, ValueError):
        return "  contrastive: no result was written"
    if not contrast.get("available"):
        return f"  contrastive: not measured ({contrast.get('reason', 'no sibling pairs')})"
    method, result = next(iter(contrast["methods"].items()))
    if not result["pairs"]:
        return f"  contrastive ({method}): no pair had its separating part visible"
    pair = max(result["pairs"], key=lambda p: p["images"])
    species, sibling = (pair[k].split(".", 1)[-1].replace("_", " ") for k in ("species", "sibling"))
    return (
        f"  contrastive ({method}), why {species} and not its sibling {sibling}: "
        f"the separating part ({', '.join(pair['separating_parts'])}) "
        f"holds {pair['share']:.1%} of the map vs {pair['area_share']:.1%} of the area "
        f"({pair['ratio']:.1f}x), median rank {pair['median_rank']:g} of the visible parts, "
        f"over {pair['images']} images: goal {'met' if pair['meets_goal'] else 'NOT met'}"
    )


def _stage(name: str) -> float:
    print(f"\n=== {name} " + "=" * max(3, 66 - len(name)), flush=True)
    return time.time()


def _done(started: float, **paths: Any) -> None:
    for key, value in paths.items():
        print(f"  {key}: {value}")
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def _recipe(cfg: DemoConfig, out: Path):
    from birdray.train.config import TrainConfig

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
    from birdray.tune.config import SweepConfig

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
    from birdray.data.ingest import IngestConfig, run_ingest, summary
    from birdray.evaluate.job import EvaluateConfig, run_evaluation
    from birdray.registry import read_pointer
    from birdray.runtime import init_ray
    from birdray.synth.job import SynthConfig, generate
    from birdray.train.job import run_training
    from birdray.tune.job import run_sweep
    from birdray.tune.promote import register_winner

    out = Path(cfg.out).resolve()
    results: dict[str, Any] = {}
    resources = init_ray(cfg.address or None, num_cpus=4)  # local: dashboard + Jobs API on loopback
    print(f"Ray cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")

    t = _stage("1. synth: generate a CUB-layout dataset")
    synth = SynthConfig(
        out=str(out / "synth"),
        classes=cfg.classes,
        per_class=cfg.per_class,
        seed=cfg.seed,
        min_side=160,
        max_side=256,
    )
    source = generate(synth)
    _done(t, dataset=source / "CUB_200_2011")

    t = _stage("2. ingest: Ray Data -> Parquet shards + manifest")
    manifest = run_ingest(
        IngestConfig(source=str(source), out=str(out / "dataset"), val_fraction=0.2, seed=cfg.seed)
    )
    _done(t, manifest=manifest, summary=summary(manifest))

    registry = out / "registry"
    t = _stage("3. tune: compare two architectures with Ray Tune, promote the winner")
    sweep = run_sweep(_sweep(cfg, out, registry))
    _done(
        t,
        report=sweep["report"],
        winner=f"{sweep['arch']} ({sweep['best_trial']})",
        registry=sweep.get("registry"),
    )

    t = _stage("4. train: fine-tune ImageNet weights with Ray Train, 2 data-parallel workers")
    recipe = _recipe(cfg, out)
    trained = run_training(recipe)
    best = trained["best"]
    _done(
        t,
        package=trained["package"],
        curves=Path(trained["run_dir"]) / "train_val_losses.png",
        best=f"val top-1 {best['val_top1']:.3f} at epoch {best['epoch']}",
    )

    t = _stage("5. evaluate: test split, calibration")
    evaluation = run_evaluation(EvaluateConfig(model=trained["package"], dataset=recipe.dataset))
    _done(
        t,
        report=evaluation["report"],
        metrics=(
            f"test top-1 {evaluation['test_top1']:.3f}, top-5 {evaluation['test_top5']:.3f}, "
            f"ECE {evaluation['ece_before']:.3f} -> {evaluation['ece_after']:.3f} "
            f"(T={evaluation['temperature']:.2f})"
        ),
    )

    t = _stage("5b. registry: register the fine-tune, promote it if it beats production")
    decision = register_winner(
        str(registry), Path(trained["package"]), {"run": recipe.name, "source": "demo"}, force=False
    )
    version = read_pointer(str(registry))["version"]
    _done(t, registry=registry, decision=decision["reason"], production=version)
    results.update(
        package=trained["package"],
        registry=str(registry),
        version=version,
        evaluation=evaluation,
        sweep=sweep["report"],
    )
    results.update(_consumers(cfg, out, registry, synth, recipe.dataset))
    results["loop"] = _feedback_loop(recipe, source, registry, out, results.pop("answers"))
    print("\nDemo finished: everything is under", out, "\nNext, on the demo's model:")
    for command in next_commands(out, registry, recipe.dataset, sweep["experiment"]):
        print("  " + command)
    if cfg.dashboard:
        _keep_serving(results.pop("app"), registry, out, out / "scored", sweep["experiment"])
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


def _test_ids(source: Path, count: int) -> list[tuple[int, Path]]:
    """A few official-test-split images (id, path) of the generated dataset, unseen in training."""
    root = source / "CUB_200_2011"
    split = dict(line.split() for line in (root / "train_test_split.txt").read_text().splitlines())
    paths = dict(line.split(" ", 1) for line in (root / "images.txt").read_text().splitlines())
    test_ids = [i for i, is_train in split.items() if is_train == "0"]
    step = max(1, len(test_ids) // count)
    return [(int(i), root / "images" / paths[i]) for i in test_ids[::step][:count]]


def _test_images(source: Path, count: int) -> list[Path]:
    return [path for _, path in _test_ids(source, count)]


def _score_folder(out: Path, source: Path) -> Path:
    """Generated test photos plus deliberately broken files: every file must get a row."""
    import shutil

    folder = out / "score_input"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "birds").mkdir(parents=True)
    for path in _test_images(source, 24):
        shutil.copy(path, folder / "birds" / path.name)
    (folder / "broken").mkdir()
    (folder / "broken" / "empty.jpg").write_bytes(b"")
    (folder / "broken" / "not an image.jpg").write_text("this is text, not a JPEG")
    first = next((folder / "birds").iterdir()).read_bytes()
    (folder / "broken" / "truncated.jpg").write_bytes(first[: len(first) // 3])
    return folder


def _feedback_loop(recipe: Any, source: Path, registry: Path, out: Path, answers: dict) -> dict:
    from birdray.feedback.loop import learn_from_feedback

    t = _stage("10. feedback loop: fine-tune production on people's answers, compare")
    loop = learn_from_feedback(
        recipe, source, str(registry / "feedback"), str(registry), out, answers["wrong"]
    )
    wrong = len(answers["wrong"])
    _done(
        t,
        package=loop["package"],
        registered=f"{loop['registered']} (with the {loop['feedback_rows']} feedback rows it "
        "learnt from; production unchanged)",
        corrected=f"{wrong} photos the served model got wrong: right "
        f"{loop['corrected_right_before']:.0%} before, {loop['corrected_right_after']:.0%} after",
        test_top1=f"{loop['test_top1_before']:.3f} -> {loop['test_top1_after']:.3f}",
    )
    return loop


def _consumers(cfg: DemoConfig, out: Path, registry: Path, synth: Any, dataset: str) -> dict:
    """Serve over real HTTP (and people's answers), batch scoring, explanations: all on the
    production model."""
    import requests

    from birdray.explain.evaluation import ExplainEvalConfig, run_explain_eval
    from birdray.explain.job import ExplainConfig, run_explain
    from birdray.feedback.loop import send_answers
    from birdray.registry import read_pointer
    from birdray.scoring.job import ScoreConfig, run_scoring
    from birdray.serve.job import shadow_agreement, shutdown, start_local
    from birdray.serve.metrics import metrics_url
    from birdray.synth.field import field_photos

    source = Path(synth.out)
    results: dict[str, Any] = {}
    t = _stage("6. explain-eval: saliency vs CUB part annotations")
    ev = run_explain_eval(
        ExplainEvalConfig(
            dataset=dataset,
            model="production",
            registry=str(registry),
            methods="gradcam",
            limit=60,
            address=cfg.address,
        )
    )
    heads = {m: h for m, h in ev.items() if isinstance(h, dict)}
    faith = {m: h.pop("faithfulness") for m, h in heads.items() if "faithfulness" in h}
    _done(
        t,
        results=ev["package"] + "/explain",
        **{k: v for k, v in ev.items() if k not in ("package", "files")},
    )
    for method, lines in faith.items():  # one block: the verdict first, then the numbers
        print(f"  faithfulness tests ({method}, pass/fail):")
        print("\n".join(f"    {test}: {line}" for test, line in lines.items()), flush=True)
    print(_one_sibling_pair(Path(ev["package"])), flush=True)

    t = _stage("7. serve: Ray Serve on the production model, the other one in its shadow")
    shadow = shadow_args(registry, read_pointer(str(registry))["version"])
    app = start_local(model="production", registry=str(registry), port=0, **shadow)
    keep = cfg.dashboard
    try:
        for path in _test_images(source, 3):
            with open(path, "rb") as fh:
                reply = requests.post(
                    f"{app.url}/v1/predict?top_k=3",
                    files={"files": (path.name, fh, "image/jpeg")},
                    timeout=60,
                )
            reply.raise_for_status()
            res = reply.json()["results"][0]
            truth = path.parent.name
            print(
                f"  {path.name}: {res['prediction']['species']} "
                f"({res['prediction']['confidence']:.2f}); true species {truth}"
            )
        # people answer: new photos of the same species, each confirmed or corrected
        answers = send_answers(app.url, field_photos(synth, out / "field_photos", per_class=3))
        print(
            f"  feedback: {answers['sent']} new photos answered, {len(answers['wrong'])} of them "
            f"corrections -> {registry / 'feedback'}"
        )
        if shadow:
            print(f"  shadow rollout: {shadow_agreement(app.url)}")
        _done(t, url=app.url, model_version=app.model_version, metrics=metrics_url())
    finally:
        if not keep:
            app.stop()
            shutdown()

    t = _stage("8. score: batch-score a folder with Ray Data (with broken files)")
    score_out = out / "scored"
    scored = run_scoring(
        ScoreConfig(
            input=str(_score_folder(out, source)),
            output=str(score_out),
            model="production",
            registry=str(registry),
            csv=True,
            overwrite=True,
            explain_lowest=3,
            address=cfg.address,
        )
    )
    _done(
        t,
        output=score_out,
        summary=score_out / "summary.json",
        counts=f"{scored['files_seen']} files: {scored['scored']} scored, "
        f"{scored['failed']} failed (rows = files seen)",
    )

    t = _stage("9. explain: which parts drove one decision")
    image_id = _test_ids(source, 1)[0][0]
    explained = run_explain(
        ExplainConfig(
            dataset=dataset,
            image_id=image_id,
            model="production",
            registry=str(registry),
            out=str(out / "explain"),
        )
    )
    _done(t, explanation=explained)
    results.update(serve_url=app.url, scored=str(score_out), explanation=str(explained))
    return {**results, "answers": answers, **({"app": app} if keep else {})}


def shadow_args(registry: Path, production: str) -> dict[str, Any]:
    """Serve's rollout arguments for the demo: its other registered model (the sweep's winner or
    the fine-tune, whichever is not production) aliased ``candidate`` and shadowing every
    request ({} when the registry has one version only)."""
    from birdray.registry import list_versions, set_alias

    others = [v for v in list_versions(str(registry)) if v != production]
    if not others:
        return {}
    set_alias(str(registry), "candidate", others[-1])
    return {"candidate": "candidate", "rollout": "shadow", "rollout_share": 1.0}


def _keep_serving(app, registry: Path, out: Path, score_out: Path, sweep_dir: str) -> None:
    """``--dashboard``: Serve and Streamlit stay up until Ctrl-C."""
    from birdray.dashboard_launcher import start_dashboard
    from birdray.serve.job import shutdown

    # Ray's fit() calls install Ctrl-C handlers of their own (Train's outlives the run unless
    # run_training puts the previous one back): make sure Python's reaches the wait below
    signal.signal(signal.SIGINT, signal.default_int_handler)
    url, process = start_dashboard(app.url, str(registry), sweep_dir, str(score_out))
    print(f"\nServe API:  {app.url}/docs\nDashboard:  {url}\n(Ctrl-C stops both)", flush=True)
    try:
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        app.stop()
        shutdown()
