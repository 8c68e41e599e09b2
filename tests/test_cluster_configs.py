"""Cluster configs checked offline with Ray's own validators, so `ray up`, `serve deploy`, `ray job
submit` and KubeRay fail here first: the launcher's JSON schema, Serve's pydantic schema, Ray's
runtime_env parser and its upload excludes. No cloud, no network, no Ray cluster.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = ["aws.yaml", "gcp.yaml", "onprem.yaml"]
KUBERAY_KINDS = {
    "raycluster.yaml": "RayCluster",
    "rayjob-train.yaml": "RayJob",
    "rayjob-score.yaml": "RayJob",
    "rayservice.yaml": "RayService",
}
DEPLOYMENTS = ["BirdIngress", "BirdClassifier", "BirdExplainer"]
APP_ARGS = {
    "model": "production",
    "api_key_env": "BIRDRAY_API_KEY",
    "max_upload_mb": 10,
    "max_files": 16,
}
JOB_SCRIPTS = {"train", "tune", "batch_score", "ingest", "evaluate"}
IMAGE_ROOT = "/home/ray/birdray/"  # where the Dockerfile puts the repo; RayJob entrypoints use it
PY_TAG = "py311"
BUCKET_SCHEME = {"aws.yaml": "s3://", "gcp.yaml": "gs://", "onprem.yaml": "/mnt/birdray/"}


def _pyproject() -> str:
    return (REPO / "pyproject.toml").read_text()


RAY_PIN = re.search(r'"ray(?:\[[^\]]*\])?==([^"]+)"', _pyproject()).group(1)
PROJECT_VERSION = re.search(r'^version = "([^"]+)"', _pyproject(), re.M).group(1)
OFFICIAL_GPU_IMAGE = f"rayproject/ray:{RAY_PIN}-{PY_TAG}-gpu"
BIRDRAY_TAG = f"{PROJECT_VERSION}-ray{RAY_PIN}-{PY_TAG}-gpu"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec inside any of the three KubeRay kinds."""
    key = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
    sub = key[doc["kind"]]
    return doc["spec"] if sub is None else doc["spec"][sub]


def pod_groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def serve_configs() -> dict[str, dict[str, Any]]:
    rayservice = load(KUBERAY / "rayservice.yaml")
    return {
        "serve.yaml": load(CLUSTER / "serve.yaml"),
        "serve_local.yaml": load(CLUSTER / "serve_local.yaml"),
        "rayservice.yaml:serveConfigV2": yaml.safe_load(rayservice["spec"]["serveConfigV2"]),
    }


def deployments(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


# --- one Ray version everywhere -------------------------------------------------------------


def test_installed_ray_is_the_pinned_version():
    import ray

    assert ray.__version__ == RAY_PIN


def test_every_ray_version_in_the_repo_agrees_with_pyproject():
    patterns = [
        r"\bray(?:\[[^\]]*\])?==(\d[\w.]*\d)",  # pip pins
        r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)",  # official images
        r"rayVersion:\s*[\"']?(\d[\w.]*\d)",  # KubeRay
        r"RAY_VERSION=(\d[\w.]*\d)",  # Dockerfile ARG
        r"-ray(\d+\.\d+\.\d+)-",  # birdray image tags
    ]
    globs = ["pyproject.toml", "Dockerfile", "README.md", "requirements*.txt", ".ci/**/*.txt"]
    files = [f for g in globs for f in REPO.glob(g)]
    files += [*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.md")]
    found = {
        (str(f.relative_to(REPO)), v)
        for f in files
        for pattern in patterns
        for v in re.findall(pattern, f.read_text())
    }
    assert {v for _, v in found} == {RAY_PIN}, sorted(found)
    pinned = {name for name, _ in found}
    expected = {"Dockerfile", *(f"cluster/{n}" for n in LAUNCHER)}
    expected |= {f"cluster/kuberay/{n}" for n in KUBERAY_KINDS}
    assert expected <= pinned


def _dockerfile_base_guard() -> str:
    """The Dockerfile's RUN step that checks BASE_IMAGE, as one shell command."""
    text = (REPO / "Dockerfile").read_text()
    run = re.search(r"^RUN (case .*?esac)$", text, re.M | re.S).group(1)
    return run.replace("\\\n", "\n")


@pytest.mark.parametrize(
    ("base", "accepted"),
    [
        (f"{OFFICIAL_GPU_IMAGE}@sha256:{'ab' * 32}", True),
        (f"docker.io/{OFFICIAL_GPU_IMAGE}@sha256:{'0f' * 32}", True),
        (OFFICIAL_GPU_IMAGE, False),  # a tag alone can be re-pushed
        (f"{OFFICIAL_GPU_IMAGE}@sha256:abc", False),
        (f"rayproject/ray:2.9.0-{PY_TAG}-gpu@sha256:{'ab' * 32}", False),
        ("", False),
    ],
)
def test_dockerfile_base_image_must_be_pinned_by_digest(base, accepted):
    """Docker's own ARG/FROM, then the Dockerfile's guard run in sh as the build runs it."""
    text = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^FROM\s+(\S+)", text, re.M) == ["${BASE_IMAGE}"]
    assert re.search(r"^ARG BASE_IMAGE$", text, re.M)  # no default: a tag cannot sneak in
    env = {"PATH": "/usr/bin:/bin", "BASE_IMAGE": base, "RAY_VERSION": RAY_PIN}
    done = subprocess.run(["sh", "-c", _dockerfile_base_guard()], env=env, capture_output=True)
    assert (done.returncode == 0) is accepted, done.stderr
    if not accepted:
        assert b"BASE_IMAGE must be" in done.stderr


def test_dockerfile_installs_what_ci_tested():
    """Every pip install in the image is held to CI's constraints, which pin every dependency."""
    text = (REPO / "Dockerfile").read_text()
    copies = dict(
        (src, dst) for src, dst in re.findall(r"^COPY(?:\s+--\S+)*\s+(\S+)\s+(\S+)$", text, re.M)
    )
    constraints = copies[".ci/constraints.txt"]
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    installs = re.findall(r"pip install [^\n&]*", code)
    assert len(installs) >= 2, installs
    for install in installs:
        assert f"-c {constraints.removeprefix('./')}" in install, install
    pinned = dict(
        line.split("==", 1)
        for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    pinned = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pinned.items()}
    import tomllib

    deps = tomllib.loads(_pyproject())["project"]["dependencies"]
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", dep).group(0)).lower()
        assert name in pinned, f"{name} floats: not pinned in .ci/constraints.txt"
    assert pinned["ray"] == RAY_PIN


def test_dockerfile_layout_rayjobs_use():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR\s+(\S+)", text, re.M).group(1) == IMAGE_ROOT.rstrip("/")
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    for source in re.findall(r"^COPY(?:\s+--\S+)*\s+(\S+)\s+\S+$", text, re.M):
        assert (REPO / source).exists(), source
        assert source in allowed, f"{source} is left out of the build context by .dockerignore"
    assert "ray.__version__" in text  # the build refuses a different Ray


# --- cluster launcher -----------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_own_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(load(CLUSTER / name))))


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_runs_the_pinned_official_image(name):
    config = load(CLUSTER / name)
    docker = config["docker"]
    images = {docker["image"], docker.get("head_image", docker["image"])}
    images.add(docker.get("worker_image", docker["image"]))
    for node_type in config.get("available_node_types", {}).values():
        images.add(node_type.get("docker", {}).get("worker_image", docker["image"]))
    assert images == {OFFICIAL_GPU_IMAGE}


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_cluster_has_cpu_head_and_autoscaling_gpu_worker_types(name):
    config = load(CLUSTER / name)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    gpus = sorted(v["resources"].get("GPU", 0) for v in workers.values())
    assert 1 in gpus and max(gpus) >= 4, gpus
    for node_type, spec in workers.items():
        assert spec["min_workers"] == 0 < spec["max_workers"], node_type


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_keeps_auth_on_and_the_dashboard_on_loopback(name):
    config = load(CLUSTER / name)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    for command in (c for c in starts if "ray start" in c):
        # `&&`, not `;`: when the environment refuses (a missing secret), Ray does not start.
        assert command.startswith("source ~/.birdray_env &&"), command
        assert ";" not in command, command
        assert "0.0.0.0" not in command
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_environment_script_enables_token_auth_and_names_the_buckets(name, tmp_path):
    """Run the env-writing setup command in bash, as the launcher would, and read what it set."""
    config = load(CLUSTER / name)
    secrets_dir = next(r for r, local in config["file_mounts"].items() if "secrets" in local)
    home = str(tmp_path)
    (tmp_path / Path(secrets_dir).relative_to("/home/ray")).mkdir(parents=True)
    (tmp_path / Path(secrets_dir).relative_to("/home/ray") / "api_key").write_text("k3y")
    (tmp_path / Path(secrets_dir).relative_to("/home/ray") / "ray_auth_token").write_text("t0k")
    (writer,) = [c for c in config["setup_commands"] if "~/.birdray_env" in c]
    env = {"HOME": home, "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # `ray up` re-runs setup commands: must stay idempotent
        subprocess.run(["bash", "-c", writer.replace("/home/ray", home)], env=env, check=True)
    assert (tmp_path / ".bashrc").read_text().count("source ~/.birdray_env") == 1
    shown = subprocess.run(
        ["bash", "-c", "source ~/.birdray_env && env"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    seen = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert seen["RAY_AUTH_MODE"] == "token"
    assert seen["RAY_AUTH_TOKEN_PATH"] == f"{secrets_dir.replace('/home/ray', home)}/ray_auth_token"
    assert seen["RAY_TRAIN_V2_ENABLED"] == "1"
    assert seen["BIRDRAY_API_KEY"] == "k3y"
    for var in ("BIRDRAY_DATA_URI", "BIRDRAY_STORAGE_URI", "BIRDRAY_REGISTRY_URI"):
        assert seen[var].startswith(BUCKET_SCHEME[name]), (var, seen[var])


@pytest.mark.parametrize("name", LAUNCHER)
@pytest.mark.parametrize(
    ("secret", "content"), [("api_key", None), ("api_key", ""), ("ray_auth_token", None)]
)
def test_launcher_refuses_to_set_up_a_node_without_its_secrets(name, secret, content, tmp_path):
    """A missing or empty secret file fails the setup command (so `ray up`), and a later
    `source ~/.birdray_env` (every `ray start`) fails too: never a key of "" served to anyone."""
    config = load(CLUSTER / name)
    secrets_dir = next(r for r, local in config["file_mounts"].items() if "secrets" in local)
    home = str(tmp_path)
    local_secrets = tmp_path / Path(secrets_dir).relative_to("/home/ray")
    local_secrets.mkdir(parents=True)
    for f in ("api_key", "ray_auth_token"):
        (local_secrets / f).write_text("s3cret")
    (local_secrets / secret).unlink()
    if content is not None:
        (local_secrets / secret).write_text(content)
    (writer,) = [c for c in config["setup_commands"] if "~/.birdray_env" in c]
    env = {"HOME": home, "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        ["bash", "-c", writer.replace("/home/ray", home)], env=env, capture_output=True, text=True
    )
    assert run.returncode != 0
    assert f"secrets/{secret} is missing or empty" in run.stderr
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "ray").write_text("#!/bin/sh\necho RAY STARTED\n")
    (fake_bin / "ray").chmod(0o755)

    def start_ray() -> subprocess.CompletedProcess:
        # A fake `ray`; ulimit's raise is left out (CI's hard limit may be lower).
        command = start.replace("ulimit -n 65536", "true")
        env_path = {**env, "PATH": f"{fake_bin}:/usr/bin:/bin"}
        return subprocess.run(["bash", "-c", command], env=env_path, capture_output=True, text=True)

    assert "RAY STARTED" not in start_ray().stdout
    (local_secrets / secret).write_text("s3cret")  # the secret arrives: now it starts
    subprocess.run(["bash", "-c", writer.replace("/home/ray", home)], env=env, check=True)
    assert "RAY STARTED" in start_ray().stdout


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_installs_the_mounted_birdray_wheel_without_touching_ray(name):
    config = load(CLUSTER / name)
    assert "." not in config["file_mounts"].values()  # the launcher would hash all of .venv
    wheel_dir = next(r for r, local in config["file_mounts"].items() if local == "./dist")
    (install,) = [c for c in config["setup_commands"] if c.startswith("pip install")]
    wheel_glob = next(a for a in shlex.split(install) if a.startswith(wheel_dir))
    assert fnmatch.fnmatch(f"{wheel_dir}/birdray-{PROJECT_VERSION}-py3-none-any.whl", wheel_glob)
    assert f"ray[train,tune,serve,data]=={RAY_PIN}" in shlex.split(install)
    ci_dir = next(r for r, local in config["file_mounts"].items() if local == "./.ci")
    assert (REPO / ".ci" / "constraints.txt").is_file()
    argv = shlex.split(install.split("&&")[0])
    assert argv[argv.index("-c") + 1] == f"{ci_dir}/constraints.txt"  # the versions CI tested
    assert "--force-reinstall" in install  # same version number, new code: still replaced


# --- ray job submit runtime_env -------------------------------------------------------------


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    config = load(CLUSTER / "runtime_env.yaml")
    assert set(config) <= RuntimeEnv.known_fields
    assert "working_dir" not in config  # `--working-dir .` on the command line provides it
    RuntimeEnv(**config)
    assert config["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"


def test_runtime_env_excludes_skip_heavy_folders_but_keep_the_code(tmp_path):
    """Ray's own upload walk over a miniature checkout, .gitignore deliberately not consulted."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files = [
        ".git/HEAD", ".venv/lib/site.py", "data/cub/a.parquet", "runs/r1/checkpoint.pt",
        "dist/birdray.whl", "birdray/__pycache__/cli.cpython-311.pyc", "birdray/cli.py",
        "birdray/data/cub.py", "jobs/train.py", "birdray/recipes/demo.yaml", "pyproject.toml",
    ]  # fmt: skip
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    excludes = load(CLUSTER / "runtime_env.yaml")["excludes"]
    uploaded: list[str] = []
    _dir_travel(
        tmp_path,
        [_get_excludes(tmp_path, excludes)],
        lambda p: uploaded.append(p.relative_to(tmp_path).as_posix()),
        include_gitignore=False,
    )
    keep = {"birdray/cli.py", "birdray/data/cub.py", "jobs/train.py", "birdray/recipes/demo.yaml"}
    assert keep | {"pyproject.toml"} <= set(uploaded)
    assert not {".git", ".venv", "data", "runs", "dist"} & set(uploaded)
    assert not [p for p in uploaded if "__pycache__" in p]


# --- Serve configs --------------------------------------------------------------------------


@pytest.mark.parametrize("source", list(serve_configs()))
def test_serve_config_passes_serve_schema_with_no_unknown_keys(source):
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        LoggingConfig,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    config = serve_configs()[source]
    ServeDeploySchema.model_validate(config)  # what `serve deploy` / KubeRay submit

    def check(data: dict[str, Any], model: type) -> None:
        # Several of Serve's models accept unknown keys for compatibility: a typo would pass.
        assert set(data) <= set(model.model_fields), (
            model.__name__,
            set(data) - set(model.model_fields),
        )

    check(config, ServeDeploySchema)
    check(config["http_options"], HTTPOptionsSchema)
    check(config.get("logging_config", {}), LoggingConfig)
    for app in config["applications"]:
        check(app, ServeApplicationSchema)
        for deployment in app["deployments"]:
            check(deployment, DeploymentSchema)
            check(deployment["ray_actor_options"], RayActorOptionsSchema)
            check(deployment["autoscaling_config"], AutoscalingConfig)
            AutoscalingConfig.model_validate(deployment["autoscaling_config"])


@pytest.mark.parametrize("source", list(serve_configs()))
def test_serve_config_matches_the_app_contract(source):
    config = serve_configs()[source]
    (app,) = config["applications"]
    assert app["import_path"] == "birdray.serve.app:build_app"
    assert {k: app["args"][k] for k in APP_ARGS} == APP_ARGS
    assert set(app["args"]) == {*APP_ARGS, "registry"} and app["args"]["registry"]
    assert [d["name"] for d in app["deployments"]] == DEPLOYMENTS


@pytest.mark.parametrize("source", list(serve_configs()))
def test_serve_config_fits_the_app_code(source):
    """args are build_app's own AppArgs; names and user_config keys are what the code uses."""
    from birdray import config as cfglib
    from birdray.serve.app import BirdIngress
    from birdray.serve.args import AppArgs
    from birdray.serve.classifier import BirdClassifier
    from birdray.serve.explainer import BirdExplainer

    config = serve_configs()[source]
    (app,) = config["applications"]
    cfglib.from_dict(AppArgs, app["args"])  # refuses unknown keys and wrong types
    assert [d.name for d in (BirdIngress, BirdClassifier, BirdExplainer)] == DEPLOYMENTS
    user_config = deployments(config)["BirdClassifier"]["user_config"]
    assert set(user_config) <= {"max_batch_size", "batch_wait_timeout_s", "model", "registry"}


@pytest.mark.parametrize("source", list(serve_configs()))
def test_serve_batches_can_fill_and_replicas_can_scale(source):
    deps = deployments(serve_configs()[source])
    classifier = deps["BirdClassifier"]
    assert classifier["max_ongoing_requests"] >= classifier["user_config"]["max_batch_size"]
    assert classifier["user_config"]["batch_wait_timeout_s"] > 0
    for name, dep in deps.items():
        scaling = dep["autoscaling_config"]
        assert scaling["max_replicas"] > scaling["min_replicas"] >= 1, name
        # A target above max_ongoing_requests is never reached, so nothing would ever scale up.
        assert scaling["target_ongoing_requests"] <= dep["max_ongoing_requests"], name
    explainer = deps["BirdExplainer"]
    assert (
        explainer["max_ongoing_requests"] <= 4
        and explainer["autoscaling_config"]["max_replicas"] <= 4
    )
    assert 0 < explainer["max_queued_requests"] <= 32


def test_gpu_serve_config_puts_the_model_on_gpus_and_the_ingress_on_cpu():
    config = load(CLUSTER / "serve.yaml")
    deps = deployments(config)
    assert deps["BirdClassifier"]["ray_actor_options"]["num_gpus"] == 1
    assert 0 < deps["BirdExplainer"]["ray_actor_options"]["num_gpus"] <= 1
    assert deps["BirdIngress"]["ray_actor_options"] == {"num_cpus": 1}
    assert config["http_options"]["port"] == 8000


def test_local_serve_config_stays_on_loopback_cpu_and_scales_quickly():
    config = load(CLUSTER / "serve_local.yaml")
    assert config["http_options"]["host"] == "127.0.0.1"
    for name, dep in deployments(config).items():
        assert dep["ray_actor_options"].get("num_gpus", 0) == 0, name
        assert dep["autoscaling_config"]["upscale_delay_s"] <= 5, name
        assert dep["autoscaling_config"]["downscale_delay_s"] <= 30, name
    (app,) = config["applications"]
    assert "://" not in app["args"]["registry"]  # a local folder, like the registry job's default


def test_rayservice_serves_exactly_cluster_serve_yaml():
    rayservice = load(KUBERAY / "rayservice.yaml")
    assert yaml.safe_load(rayservice["spec"]["serveConfigV2"]) == load(CLUSTER / "serve.yaml")


# --- KubeRay --------------------------------------------------------------------------------


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


@pytest.mark.parametrize("name", list(KUBERAY_KINDS))
def test_kuberay_manifest_is_pinned_autoscaled_and_authenticated(name):
    doc = load(KUBERAY / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == KUBERAY_KINDS[name]
    spec = cluster_spec(doc)
    assert spec["rayVersion"] == RAY_PIN
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    for group in pod_groups(spec):
        # rayStartParams is map[string]string in the CRD: a bare YAML number is rejected.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group
        for container in _containers(group):
            _, tag = container["image"].rsplit(":", 1)
            assert tag == BIRDRAY_TAG, container["image"]
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # never a public LoadBalancer


def _secret_refs(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node["secretKeyRef"]] if "secretKeyRef" in node else []
        return found + [r for v in node.values() for r in _secret_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _secret_refs(v)]
    return []


@pytest.mark.parametrize("name", list(KUBERAY_KINDS))
def test_kuberay_secrets_are_never_optional(name):
    """A missing Secret must stop the pod (CreateContainerConfigError), not run it keyless."""
    doc = load(KUBERAY / name)
    for ref in _secret_refs(doc):
        assert ref.get("optional", False) is False, ref
    for group in pod_groups(cluster_spec(doc)):
        for container in _containers(group):
            for var in container.get("env", []):
                if var["name"] == "BIRDRAY_API_KEY":
                    assert "value" not in var and var["valueFrom"]["secretKeyRef"]["key"]


@pytest.mark.parametrize("name", list(KUBERAY_KINDS))
def test_kuberay_gpu_groups_request_gpus_and_autoscale(name):
    workers = cluster_spec(load(KUBERAY / name))["workerGroupSpecs"]
    gpu_groups = [
        g for g in workers if "nvidia.com/gpu" in _containers(g)[0]["resources"]["limits"]
    ]
    assert gpu_groups, "no GPU worker group"
    for group in workers:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"], group["groupName"]
    for group in gpu_groups:
        resources = _containers(group)[0]["resources"]
        gpus = resources["limits"]["nvidia.com/gpu"]
        assert isinstance(gpus, int) and gpus >= 1
        assert resources.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), group["groupName"]


@pytest.mark.parametrize(
    ("name", "script"), [("rayjob-train.yaml", "train"), ("rayjob-score.yaml", "batch_score")]
)
def test_rayjob_cleans_up_after_itself(name, script):
    from ray.runtime_env import RuntimeEnv

    spec = load(KUBERAY / name)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)
    assert runtime_env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", f"{IMAGE_ROOT}jobs/{script}.py"] and script in JOB_SCRIPTS


@pytest.mark.parametrize(
    ("name", "script"), [("rayjob-train.yaml", "train"), ("rayjob-score.yaml", "batch_score")]
)
def test_rayjob_entrypoint_parses_with_the_jobs_own_cli(name, script):
    """The entrypoint goes through the same parser and config resolution as the job itself."""
    from birdray import cli
    from birdray import config as cfglib

    argv = shlex.split(load(KUBERAY / name)["spec"]["entrypoint"])
    script_path = REPO / "jobs" / f"{script}.py"
    assert script_path.is_file(), f"jobs/{script}.py is missing (the image copies jobs/)"
    job = re.search(r'run_job\("([\w-]+)"\)', script_path.read_text()).group(1)
    parser, config_cls, _ = cli.build_parser(job, cli.JOBS[job])
    args, unknown = parser.parse_known_args(argv[2:])
    assert not unknown, f"flags {job} does not have: {unknown}"
    if args.config:  # a recipe shipped inside the package (in the image), by name
        assert cfglib.config_path(args.config).parent == cfglib.RECIPES, args.config
    cfg = cfglib.resolve(config_cls, args)
    if getattr(cfg, "model", "") in ("production", "latest"):
        assert cfg.registry, "a registry alias needs --registry"


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-score.yaml"])
def test_rayjob_reads_and_writes_only_the_bucket(name):
    """Pods keep nothing: every location a job uses is a bucket URI or inside the image."""
    spec = load(KUBERAY / name)["spec"]
    argv = shlex.split(spec["entrypoint"])
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    locations = {f: v for f, v in flags.items() if "/" in v and not v.startswith(IMAGE_ROOT)}
    assert locations, flags
    for flag, value in locations.items():
        assert value.startswith("s3://my-birdray-bucket/"), (flag, value)
    assert {"--dataset", "--storage-path", "--registry"} <= set(locations) or {
        "--input",
        "--output",
        "--registry",
    } <= set(locations)
    pods = [spec["rayClusterSpec"]["headGroupSpec"]] + spec["rayClusterSpec"]["workerGroupSpecs"]
    for pod in pods:
        for volume in pod["template"]["spec"].get("volumes", []):
            assert set(volume) == {"name", "emptyDir"}, volume  # scratch only


def test_cluster_readme_mentions_only_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    for path in set(re.findall(r"\bcluster/[\w./-]+\.(?:yaml|md)\b", text)):
        assert (REPO / path).is_file(), path
    for name in set(re.findall(r"--config (\w+)\b", text)) - {"sweep_"}:
        assert (REPO / "birdray" / "recipes" / f"{name}.yaml").is_file(), name
    for job in set(re.findall(r"\bjobs/(\w+)\.py\b", text)):
        assert (REPO / "jobs" / f"{job}.py").is_file(), job
