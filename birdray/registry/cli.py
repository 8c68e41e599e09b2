"""``birdray registry list|show|promote|rollback``: inspect the registry, move ``production``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from birdray.config import field
from birdray.model.factory import ModelError
from birdray.registry.pointer import read_pointer
from birdray.registry.versions import RegistryError, check_ref, check_version, list_versions
from birdray.registry.views import promote, rollback, version_metadata, version_of

ACTIONS = ("list", "show", "promote", "rollback")


@dataclass
class RegistryConfig:
    positional = "action"
    action: str = field("list", "list | show | promote | rollback")
    registry: str = field("runs/registry", "registry folder or URI")
    version: str = field("production", "show: v0003|latest|production; promote: v0003|latest")


def list_rows(registry: str) -> list[dict[str, Any]]:
    """One row per committed version (metadata only: no weights are downloaded)."""
    current = read_pointer(registry)["version"]
    rows = []
    for version in list_versions(registry):
        try:
            meta = version_metadata(registry, version)
            top1 = meta.metrics.get("test_top1", meta.metrics.get("val_top1"))
            rows.append(
                {
                    "version": version,
                    "arch": meta.arch,
                    "top1": top1,
                    "temperature": meta.temperature,
                    "production": version == current,
                }
            )
        except (ModelError, RegistryError, OSError) as exc:
            rows.append({"version": version, "error": str(exc)})
    return rows


def run_registry(cfg: RegistryConfig) -> Any:
    """Inspect the registry or move its production pointer."""
    if cfg.action not in ACTIONS:
        raise RegistryError(
            f"unknown registry action {cfg.action!r} (expected {'|'.join(ACTIONS)})"
        )
    # checked before anything is read: a typo is one clear line
    if cfg.action == "show":
        check_ref(cfg.version)
    if cfg.action == "promote" and cfg.version != "latest":
        check_version(cfg.version)
    if cfg.action == "list":
        return list_rows(cfg.registry)
    if cfg.action == "show":
        return asdict(version_metadata(cfg.registry, version_of(cfg.version, cfg.registry)))
    if cfg.action == "promote":
        return promote(cfg.registry, version_of(cfg.version, cfg.registry))
    return rollback(cfg.registry)
