"""The demo's stages after a model is in production: its consumers, and the feedback loop.

Explain-eval, Serve (with a shadow rollout), batch scoring, one-image explanations, the dashboard
and people's corrections back into training: each calls the job function its own command calls.
``birdray.demo`` runs stages 1-5 (data, sweep, training, evaluation, registry) and then these.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from birdray.dashboard_launcher import start_dashboard
from birdray.feedback.loop import learn_from_feedback, send_answers
from birdray.serve.metrics import metrics_url
from birdray.synth.field import field_photos

if TYPE_CHECKING:  # the demo imports this module: its config only for the annotation
    from birdray.demo import DemoConfig


def stage(name: str) -> float:
    print(f"\n=== {name} " + "=" * max(3, 66 - len(name)), flush=True)
    return time.time()


def done(started: float, **paths: Any) -> None:
    for key, value in paths.items():
        print(f"  {key}: {value}")
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def one_sibling_pair(package: Path) -> str:
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


def feedback_loop(recipe: Any, source: Path, registry: Path, out: Path, answers: dict) -> dict:

    t = stage("10. feedback loop: fine-tune production on people's answers, compare")
    loop = learn_from_feedback(
        recipe, source, str(registry / "feedback"), str(registry), out, answers["wrong"]
    )
    wrong = len(answers["wrong"])
    done(
        t,
        package=loop["package"],
        registered=f"{loop['registered']} (with the {loop['feedback_rows']} feedback rows it "
        "learnt from; production unchanged)",
        corrected=f"{wrong} photos the served model got wrong: right "
        f"{loop['corrected_right_before']:.0%} before, {loop['corrected_right_after']:.0%} after",
        test_top1=f"{loop['test_top1_before']:.3f} -> {loop['test_top1_after']:.3f}",
    )
    return loop


def consumers(cfg: DemoConfig, out: Path, registry: Path, synth: Any, dataset: str) -> dict:
    """Serve over real HTTP (and people's answers), batch scoring, explanations: all on the
    production model."""

    from birdray.explain.evaluation import ExplainEvalConfig, run_explain_eval
    from birdray.explain.job import ExplainConfig, run_explain
    from birdray.registry import read_pointer
    from birdray.scoring.job import ScoreConfig, run_scoring
    from birdray.serve.job import shadow_agreement, shutdown, start_local
    from birdray.serve.proxy import running_proxy

    source = Path(synth.out)
    results: dict[str, Any] = {}
    t = stage("6. explain-eval: saliency vs CUB part annotations")
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
    done(
        t,
        results=ev["package"] + "/explain",
        **{k: v for k, v in ev.items() if k not in ("package", "files")},
    )
    for method, lines in faith.items():  # one block: the verdict first, then the numbers
        print(f"  faithfulness tests ({method}, pass/fail):")
        print("\n".join(f"    {test}: {line}" for test, line in lines.items()), flush=True)
    print(one_sibling_pair(Path(ev["package"])), flush=True)

    t = stage("7. serve: Ray Serve on the production model, the other one in its shadow")
    shadow = shadow_args(registry, read_pointer(str(registry))["version"])
    proxy = "serve" if cfg.address else cfg.serve_proxy  # a cluster keeps the proxy it runs
    app = start_local(model="production", registry=str(registry), port=0, proxy=proxy, **shadow)
    front = {"haproxy": "HAProxy", "serve": "Serve's Python proxy"}.get(running_proxy() or "")
    print(f"  {app.url}, through {front or 'a proxy Serve did not name'}", flush=True)
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
        done(t, url=app.url, model_version=app.model_version, metrics=metrics_url())
    finally:
        if not keep:
            app.stop()
            shutdown()

    t = stage("8. score: batch-score a folder with Ray Data (with broken files)")
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
    done(
        t,
        output=score_out,
        summary=score_out / "summary.json",
        counts=f"{scored['files_seen']} files: {scored['scored']} scored, "
        f"{scored['failed']} failed (rows = files seen)",
    )

    t = stage("9. explain: which parts drove one decision")
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
    done(t, explanation=explained)
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


def keep_serving(app, registry: Path, out: Path, score_out: Path, sweep_dir: str) -> None:
    """``--dashboard``: Serve and Streamlit stay up until Ctrl-C."""
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
