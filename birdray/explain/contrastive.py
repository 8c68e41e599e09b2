"""Contrastive ground truth: "why this species and not its sibling", checked against the generator.

The generated dataset (``synthetic_species.json`` beside its ``CUB_200_2011`` files) records
sibling pairs: two species identical except for one trait, hence one part (two for wings).
A faithful explanation of logit(species) - logit(sibling) can only find evidence there, so per
ordered pair we report the separating part's attribution share against its area share (what a
uniform map would give) and its rank among the visible parts. The goal, printed with the
fraction of pairs that meet it: share >= ``GOAL_RATIO`` x area share and median rank <= 3.

The contrast is computed by wrapping the model so its outputs are ``logits - logits[sibling]``:
every Captum method then attributes the difference for ``target=species``, and the softmax of the
shifted logits is unchanged, so the prediction and probabilities stay the model's own. Real CUB
has no such ground truth: the table is then absent, with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import torch

from birdray import storage
from birdray.data.manifest import read_split
from birdray.explain.attribution import Explanation, explain, find_early_layer, find_gradcam_layer
from birdray.explain.parts import score_parts
from birdray.images import decode_image

SPECIES_FILE = "synthetic_species.json"  # written by birdray.synth.job
GOAL_RATIO = 2.0
GOAL_RANK = 3
GOAL = f"separating part's share >= {GOAL_RATIO:g}x its area share and median rank <= {GOAL_RANK}"


class Contrast(torch.nn.Module):
    """``model`` with every logit minus ``other``'s: class c's output is logit(c) - logit(other)."""

    def __init__(self, model: torch.nn.Module, other: int):
        super().__init__()
        self.model, self.other = model, int(other)
        self.train(model.training)  # a fresh Module is in training mode: keep the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits - logits[:, self.other : self.other + 1]


def contrastive_explain(
    model: torch.nn.Module,
    data_config: dict[str, Any],
    image: Any,
    target: int,
    other: int,
    method: str = "gradcam",
    **kw: Any,
) -> Explanation:
    """The map of logit(``target``) - logit(``other``) on ``image`` (same layers as ``explain``)."""
    size = tuple(data_config["input_size"])
    if method in ("gradcam", "gradcam_early") and "layer" not in kw:
        find = find_gradcam_layer if method == "gradcam" else find_early_layer
        kw["layer"] = "model." + find(model, size)[0]
    return explain(Contrast(model, other), data_config, image, method, target, **kw)


def load_siblings(
    manifest: dict[str, Any], path: str = ""
) -> tuple[dict[int, dict[str, Any]], str]:
    """``{label: {sibling, parts, traits}}`` of the paired species, and where it came from (or
    why there is none). ``path``: the species file or its folder; default: the dataset's source."""
    where = path or (manifest.get("source") or {}).get("root") or ""
    if not where:
        return {}, "the dataset records no source folder to look for sibling information in"
    if not str(where).endswith(".json"):
        where = storage.join(where, SPECIES_FILE)
    try:
        data = json.loads(storage.read_bytes(where))
    except (FileNotFoundError, OSError, ValueError):
        return {}, (f"no sibling ground truth ({where} not found): only generated datasets "
                    "record which part separates two species (real CUB does not)")  # fmt: skip
    labels = {name: i for i, name in enumerate(manifest["class_names"])}
    by_id = {c["class_id"]: c for c in data.get("classes", [])}
    out = {}
    for c in by_id.values():
        other = by_id.get(c.get("sibling"))
        if not c.get("paired") or other is None or c["name"] not in labels:
            continue
        if other["name"] in labels and c.get("discriminative_parts"):
            out[labels[c["name"]]] = {"sibling": labels[other["name"]],
                                      "parts": list(c["discriminative_parts"]),
                                      "traits": list(c.get("differing_traits", []))}  # fmt: skip
    if not out:
        return {}, f"{where} has no sibling pair among this dataset's classes"
    return out, str(where)


def separating_score(
    attribution: np.ndarray, parts: Any, bbox: Any, part_names: list[str], separating: list[str],
    radius: float = 0.1,
) -> dict[str, float] | None:  # fmt: skip
    """Share, area share and rank (1 = most attributed visible part) of the separating part(s);
    None when none of them is visible in this image.

    A part tied with others ranks below all of them: a part the map gives nothing is last, not
    first because its name sorts first (a map that misses the bird ties every part at zero)."""
    score = score_parts(attribution, parts, bbox, part_names, radius)
    seen = [p for p in separating if score.visible[p]]
    if not seen:
        return None
    visible = [share for _, share in score.ranking()]
    return {
        "share": float(sum(score.shares[p] for p in seen)),
        "area_share": float(sum(score.area_shares[p] for p in seen)),
        "rank": float(min(sum(s >= score.shares[p] for s in visible) for p in seen)),
        "visible_parts": float(len(visible)),
    }


def summarize_pairs(rows: pd.DataFrame, class_names: list[str]) -> dict[str, Any]:
    """Per method and ordered pair: mean share vs area share (ratio), median rank, goal met.

    ``rows``: one per image and method with ``method, label, sibling, parts, share, area_share,
    rank``; images whose separating part is hidden have NaN shares and are left out."""
    rows = rows[np.isfinite(rows["share"].astype(float))]
    methods: dict[str, Any] = {}
    for method, group in rows.groupby("method", sort=False):
        pairs = []
        for (label, sibling), g in group.groupby(["label", "sibling"]):
            share, area = float(g["share"].mean()), float(g["area_share"].mean())
            ratio = share / area if area > 0 else float("nan")
            rank = float(g["rank"].median())
            pairs.append({
                "species": class_names[int(label)], "sibling": class_names[int(sibling)],
                "label": int(label), "sibling_label": int(sibling),
                "separating_parts": list(g["parts"].iloc[0]), "images": int(len(g)),
                "share": share, "area_share": area, "ratio": ratio, "median_rank": rank,
                "top3_fraction": float((g["rank"] <= GOAL_RANK).mean()),
                "meets_goal": bool(ratio >= GOAL_RATIO and rank <= GOAL_RANK),
            })  # fmt: skip
        met = sum(p["meets_goal"] for p in pairs)
        methods[str(method)] = {
            "pairs": pairs, "pairs_meeting_goal": met, "pairs_total": len(pairs),
            "fraction_meeting_goal": met / len(pairs) if pairs else 0.0,
            "mean_ratio": float(np.nanmean([p["ratio"] for p in pairs])) if pairs else None,
        }  # fmt: skip
    return {"available": True, "goal": GOAL, "methods": methods}


class ContrastWorker:
    """Ray Data actor: contrastive maps (species vs sibling) of sibling-pair images, scored."""

    def __init__(self, files: dict[str, bytes], part_names: list[str], siblings: dict,
                 cfg: dict[str, Any]):  # fmt: skip
        from birdray.model.factory import pick_device, set_threads
        from birdray.model.package import load_package_files

        set_threads(cfg["threads"])
        package = load_package_files(files, verified=True)  # package_files checked
        self.model = package.model.to(pick_device(cfg["num_gpus"] > 0)).eval()
        self.data_config = package.metadata.data_config
        self.part_names, self.siblings, self.cfg = part_names, siblings, cfg
        self.kw = {k: cfg[k] for k in ("steps", "baseline", "nt_samples", "nt_stdev")}

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:

        out = []
        for rec in batch.itertuples(index=False):
            pair = self.siblings.get(int(rec.label))
            if pair is None or rec.bbox is None:
                continue
            image = decode_image(bytes(rec.image)).image
            for method in self.cfg["methods"]:
                exp = contrastive_explain(self.model, self.data_config, image, int(rec.label),
                                          pair["sibling"], method, **self.kw)  # fmt: skip
                score = separating_score(
                    exp.attribution,
                    list(rec.parts),
                    list(rec.bbox),
                    self.part_names,
                    pair["parts"],
                    self.cfg["radius"],
                )
                nan = float("nan")
                out.append({"image_id": int(rec.image_id), "method": method,
                            "label": int(rec.label), "sibling": pair["sibling"],
                            "parts": pair["parts"], "seconds": exp.seconds,
                            **(score or {"share": nan, "area_share": nan, "rank": nan,
                                         "visible_parts": nan})})  # fmt: skip
        return pd.DataFrame(out)


def run_contrastive(
    dataset: str, split: str, manifest: dict[str, Any], files: dict[str, bytes],
    worker_cfg: dict[str, Any], siblings_path: str = "", images: int = 60,
) -> dict[str, Any]:  # fmt: skip
    """The per-pair table over up to ``images`` sibling-pair images of ``split`` (Ray Data)."""
    import ray

    siblings, source = load_siblings(manifest, siblings_path)
    if not siblings:
        return {"available": False, "reason": source, "goal": GOAL}
    wanted = set(siblings)
    ds = read_split(dataset, split, ["image_id", "image", "label", "bbox", "parts"], list_once=True)
    ds = ds.filter(lambda row: int(row["label"]) in wanted)
    if images > 0:
        ds = ds.limit(images)
    keys = ("methods", "threads", "num_gpus", "steps", "baseline", "nt_samples", "nt_stdev",
            "radius")  # fmt: skip
    rows = ds.map_batches(
        ContrastWorker,
        fn_constructor_kwargs={"files": files, "part_names": manifest["part_names"],
                               "siblings": siblings, "cfg": {k: worker_cfg[k] for k in keys}},
        batch_size=worker_cfg.get("batch_size", 4), batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=worker_cfg.get("actors", 1)),
        num_cpus=worker_cfg.get("actor_cpus", 0.5), num_gpus=worker_cfg["num_gpus"] or None,
    ).to_pandas()  # fmt: skip
    if rows.empty:
        return {"available": False, "goal": GOAL, "source": source,
                "reason": f"split {split!r} has no images of a sibling pair"}  # fmt: skip
    return {**summarize_pairs(rows, manifest["class_names"]), "source": source,
            "images": int(rows["image_id"].nunique())}  # fmt: skip


def contrastive_lines(contrastive: dict[str, Any]) -> dict[str, str]:
    """One printable line per method: how many pairs meet the goal (never rounded up)."""
    if not contrastive.get("available"):
        return {"all": f"not measured: {contrastive.get('reason', 'no sibling information')}"}
    lines = {}
    for method, r in contrastive["methods"].items():
        lines[method] = (f"{r['pairs_meeting_goal']}/{r['pairs_total']} sibling pairs meet the "
                         f"goal ({r['fraction_meeting_goal']:.0%}; goal: {GOAL}); mean "
                         f"share/area {r['mean_ratio']:.2f}x")  # fmt: skip
    return lines
