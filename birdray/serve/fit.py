"""Fitting the Serve app's replicas to the cluster: at start (``plan_serve``) and for a
redeploy (``plan_redeploy``), whose new replicas start beside the old ones only where there is
room. Ray never refuses a replica that fits no node: it waits, and ``serve.run`` with it; on 2
CPUs a swap with the default surge waited forever. Same rules as ``birdray.resources``.
"""

from __future__ import annotations

from typing import Any

from birdray.config import from_dict
from birdray.resources import ResourceError, check_gpus, cluster_cpus_gpus, say

# Serve deployment -> (what the user calls it, replicas, CPU and GPU per replica)
Replicas = dict[str, tuple[str, int, float, float]]


def serve_replicas(args: dict[str, Any]) -> Replicas:
    """The Serve app's replicas per deployment (``AppArgs`` fields; autoscaling starts at
    ``min_replicas``), keyed by Serve's deployment names so two versions of the app compare."""
    from birdray.serve.args import AppArgs, colocated

    opts = from_dict(AppArgs, dict(args))
    model = (opts.min_replicas, opts.model_num_cpus, opts.num_gpus)
    n = opts.ingress_replicas
    replicas: Replicas = {"BirdIngress": ("ingress", n, opts.ingress_num_cpus, 0.0)}
    if colocated(opts):  # the model lives in each ingress replica, with its CPUs and GPUs
        cpus = opts.ingress_num_cpus + opts.model_num_cpus
        replicas = {"BirdIngress": ("ingress with the model", n, cpus, opts.num_gpus)}
    else:
        replicas["BirdClassifier"] = ("model", *model)
    if opts.candidate:  # the rollout's second model deployment, same options
        replicas["CandidateClassifier"] = ("candidate", *model)
    if opts.explain:
        replicas["BirdExplainer"] = ("explainer", 1, opts.explain_num_cpus, opts.explain_num_gpus)
    return replicas


def _total(replicas: Replicas) -> tuple[float, float]:
    return (
        sum(n * c for _, n, c, _ in replicas.values()),
        sum(n * g for _, n, _, g in replicas.values()),
    )


def _describe(replicas: Replicas) -> str:
    return " + ".join(f"{n} {label} x {c:g} CPU" for label, n, c, _ in replicas.values())


def plan_serve(args: dict[str, Any], cluster: dict[str, float]) -> None:
    """The Serve app's replicas (``AppArgs`` fields; autoscaling starts at ``min_replicas``)
    must fit the cluster's totals, or they would wait for a node forever."""
    replicas = serve_replicas(args)
    have_cpu = cluster_cpus_gpus(cluster)[0]
    cpu, gpu = _total(replicas)
    if cpu > have_cpu + 1e-9:
        raise ResourceError(
            f"Serve replicas {_describe(replicas)} need {cpu:g} CPU; the cluster has {have_cpu:g}"
        )
    check_gpus("the Serve replicas", gpu, cluster)


def surge_need(old: Replicas, new: Replicas, surge_percent: int) -> tuple[float, float]:
    """CPU and GPU a redeploy from ``old`` to ``new`` takes beyond what ``old`` holds, at its
    peak, with Serve's ``max_surge_percent``. Each deployment of both restarts (``serve.run``
    gives every deployment a new code version); Serve first starts, beside every old replica,
    ``ceil(percent x n)`` plus the growth ``n - n_old`` of new ones, at most ``n``
    (``deployment_state._surge_replicas_to_start``; with 0 only the growth), then swaps the
    rest one for one, ending at the new size. A new deployment starts whole; a removed one gives
    its share back."""
    cpu = gpu = 0.0
    for name, (_, n, c, g) in new.items():
        if name not in old:
            cpu, gpu = cpu + n * c, gpu + n * g
            continue
        _, n_old, c_old, g_old = old[name]
        surge = (surge_percent * n + 99) // 100 if surge_percent > 0 else 0  # Serve's ceiling
        first = max(0, min(n, surge + n - n_old))  # started beside all the old replicas
        cpu += max(first * c, n * c - n_old * c_old, 0.0)
        gpu += max(first * g, n * g - n_old * g_old, 0.0)
    for name, (_, n, c, g) in old.items():
        if name not in new:
            cpu, gpu = cpu - n * c, gpu - n * g
    return cpu, gpu


def plan_redeploy(
    old_args: dict[str, Any],
    new_args: dict[str, Any],
    free: dict[str, float],
    cluster: dict[str, float],
) -> int:
    """The ``max_surge_percent`` a redeploy of the running app (``old_args``) to ``new_args``
    can use with ``free`` resources (``ray.available_resources()``, the old app holding its
    share): the one asked for when its surge replicas fit beside the running ones, else the
    largest that fits (one line says so), else 0: replace in place (stop, then start; requests
    wait in Serve's queues meanwhile). A new app that cannot fit even in place is refused with
    the numbers: Serve would keep its replicas pending forever."""
    from birdray.serve.args import AppArgs

    plan_serve(new_args, cluster)  # the cluster's totals first
    old, new = serve_replicas(old_args), serve_replicas(new_args)
    free_cpu, free_gpu = cluster_cpus_gpus(free)
    asked = from_dict(AppArgs, dict(new_args)).max_surge_percent

    def fits(percent: int) -> bool:
        cpu, gpu = surge_need(old, new, percent)
        return cpu <= free_cpu + 1e-9 and gpu <= free_gpu + 1e-9

    if not fits(0):
        cpu, gpu = surge_need(old, new, 0)
        all_cpu, all_gpu = cluster_cpus_gpus(cluster)
        raise ResourceError(
            f"redeploy: Serve replicas {_describe(new)} need {cpu:g} CPU and {gpu:g} GPU more than"
            f" the running app's {_describe(old)} hold; the cluster has {free_cpu:g} CPU and"
            f" {free_gpu:g} GPU free (of {all_cpu:g} CPU, {all_gpu:g} GPU)"
        )
    if asked <= 0 or fits(asked):
        return max(asked, 0)
    chosen = next((p for p in range(asked - 1, 0, -1) if fits(p)), 0)
    cpu, gpu = surge_need(old, new, asked)
    how = (
        f"max_surge_percent {chosen} instead"
        if chosen
        else "each replica is replaced in place instead (stopped, then started; requests wait"
        " meanwhile)"
    )
    say(
        f"resources: redeploy with max_surge_percent {asked} needs {cpu:g} CPU and {gpu:g} GPU"
        f" beside the running replicas ({_describe(old)}); the cluster has {free_cpu:g} CPU and"
        f" {free_gpu:g} GPU free; {how}"
    )
    return chosen
