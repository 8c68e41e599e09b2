"""The one model reference: what kind a ``--model`` is, how Serve pins it, how replicas read it."""

from __future__ import annotations

import dataclasses

import pytest

from birdray.evaluate.job import EvaluateConfig
from birdray.explain.evaluation import ExplainEvalConfig
from birdray.explain.job import ExplainConfig
from birdray.registry import RegistryError, set_alias
from birdray.registry.ref import DEFAULT_REGISTRY, ModelChoice, ModelRef
from birdray.scoring.job import ScoreConfig
from birdray.serve.args import AppArgs
from tests.model_fixture import make_package


@pytest.fixture
def registry(two_version_registry):
    return two_version_registry


def test_every_model_consumer_has_the_same_flags_and_defaults():
    configs = (ScoreConfig, EvaluateConfig, ExplainConfig, ExplainEvalConfig, AppArgs)
    for cls in configs:
        assert issubclass(cls, ModelChoice), cls
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert fields["model"].default == "production", cls
        assert fields["registry"].default == DEFAULT_REGISTRY, cls
    score = ScoreConfig(input="in", output="out", model="v0002", registry="r")
    assert score.ref == ModelRef("v0002", "r")


def test_kinds(tmp_path):
    package = make_package(tmp_path / "pkg")
    (tmp_path / "plain").mkdir()
    assert ModelRef(str(package)).kind == "package"
    assert ModelRef(str(tmp_path / "plain")).kind == "missing_path"  # a folder, but no package
    assert ModelRef("./nowhere").kind == "missing_path"
    assert ModelRef("latest").kind == "latest"
    assert ModelRef("v0003").kind == "version"
    assert ModelRef("").name == "production" and ModelRef("").kind == "alias"
    assert ModelRef("candidate").kind == "alias"
    assert ModelRef("v1").kind == "invalid"  # looks like a version, is none
    assert ModelRef("Bad Name").kind == "invalid"


def test_pinned_turns_aliases_into_versions_and_paths_absolute(registry, tmp_path, monkeypatch):
    assert ModelRef("production", registry).pinned() == ModelRef("v0001", registry)
    assert ModelRef("latest", registry).pinned().model == "v0002"
    set_alias(registry, "candidate", "v0002")
    assert ModelRef("candidate", registry).pinned().model == "v0002"  # a canary is pinned too
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryError, match="expected a model package folder"):
        ModelRef("reg", "reg").pinned()  # the registry's folder is no package: never a version
    pinned = ModelRef("production", "reg").pinned()
    assert pinned.registry == str((tmp_path / "reg").resolve())
    package = make_package(tmp_path / "loose")
    assert ModelRef("loose", "").pinned() == ModelRef(str(package.resolve()), "")
    with pytest.raises(RegistryError, match="no registry"):
        ModelRef("production", "").pinned()
    with pytest.raises(RegistryError, match="no production model"):
        ModelRef("production", str(tmp_path / "empty")).pinned()
    with pytest.raises(RegistryError, match="expected"):
        ModelRef("v1", registry).pinned()


def test_pinned_then_resolved_is_the_same_package(registry):
    ref = ModelRef("production", registry)
    assert ref.pinned().resolve() == ref.resolve()


def test_a_user_config_swaps_the_model_or_keeps_it():
    loaded = ModelRef("v0001", "r")
    assert ModelRef.from_config({"model": "v0002"}, loaded) == ModelRef("v0002", "r")
    assert ModelRef.from_config({"model": "/p", "registry": ""}, loaded) == ModelRef("/p", "")
    # a config file's user_config with only batch knobs keeps the model the app was built with
    assert ModelRef.from_config({"max_batch_size": 8}, loaded) is loaded
    assert ModelRef.from_config(None, loaded) is loaded
