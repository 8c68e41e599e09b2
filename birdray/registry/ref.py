"""The one model reference every consumer takes, parsed in one place.

``--model`` names a package folder, or ``production`` / ``latest`` / an alias / ``v0003`` in
``--registry`` (a folder or bucket URI). Every config that loads a model inherits
``ModelChoice``, so the two flags, their defaults and their help are the same in ``score``,
``evaluate``, ``explain``, ``explain-eval`` and ``serve``; ``ModelRef`` says what kind of
reference it is, pins an alias to the version it names now (Serve: a swap is a config edit) and
resolves it to a local, verified package folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from birdray import storage
from birdray.config import field
from birdray.registry.versions import ALIAS_RE, NOT_ALIASES, VERSION_RE, RegistryError
from birdray.registry.views import resolve, version_of

DEFAULT_MODEL = "production"
DEFAULT_REGISTRY = "runs/registry"  # where `birdray train --registry` and the demo's hints point
MODEL_HELP = "a model package folder, or production | latest | an alias | v0003 in --registry"
REGISTRY_HELP = "registry folder or URI that --model names a version of ('': --model is a folder)"

Kind = Literal["package", "missing_path", "latest", "version", "alias", "invalid"]


@dataclass(frozen=True)
class ModelRef:
    """``model`` within ``registry``; an empty ``model`` means ``production``."""

    model: str = DEFAULT_MODEL
    registry: str = DEFAULT_REGISTRY

    @property
    def name(self) -> str:
        return self.model or DEFAULT_MODEL

    @property
    def kind(self) -> Kind:
        name, path = self.name, Path(self.name).expanduser()
        if path.is_dir() and (path / "metadata.json").is_file():
            return "package"
        if os.sep in name or name.startswith((".", "~")) or path.is_dir():
            return "missing_path"  # a path (or a folder that is no package), never a version
        if name == "latest":
            return "latest"
        if VERSION_RE.fullmatch(name):
            return "version"
        if ALIAS_RE.fullmatch(name) and not NOT_ALIASES.fullmatch(name):
            return "alias"
        return "invalid"

    def pinned(self) -> ModelRef:
        """The same model, named so it cannot move: an absolute folder, or a concrete version in
        an absolute registry location (aliases and ``latest`` looked up now)."""

        kind = self.kind
        if kind == "package":
            return ModelRef(storage.absolute(self.name), "")
        if kind in ("missing_path", "invalid"):
            raise RegistryError(f"model {self.name!r}: expected {MODEL_HELP}")
        if not self.registry:
            raise RegistryError(
                f"model {self.name!r} is not a package folder and no registry was given"
            )
        registry = storage.absolute(self.registry)
        return ModelRef(version_of(self.name, registry), registry)

    def resolve(self) -> Path:
        """A local, verified package folder (a registry version downloaded and calibrated)."""

        return resolve(self.name, self.registry or None)

    @classmethod
    def from_config(cls, config: dict[str, Any] | None, current: ModelRef) -> ModelRef:
        """The reference a Serve ``user_config`` swaps to; one without ``model`` keeps ``current``
        (a config file's batch knobs replace the code's whole ``user_config``)."""
        config = config or {}
        if not config.get("model"):
            return current
        return cls(str(config["model"]), str(config.get("registry", current.registry) or ""))


@dataclass
class ModelChoice:
    """Base of every config that loads a model: the same ``--model``/``--registry`` everywhere."""

    model: str = field(DEFAULT_MODEL, MODEL_HELP)
    registry: str = field(DEFAULT_REGISTRY, REGISTRY_HELP)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model, self.registry)
