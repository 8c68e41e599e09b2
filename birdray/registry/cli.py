"""``birdray registry list|show|add|promote|rollback|alias|clean``: inspect the registry, move
aliases, remove what killed registrations left."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from birdray import storage
from birdray.config import field
from birdray.model.errors import ModelError
from birdray.registry.pointer import PRODUCTION, read_aliases
from birdray.registry.versions import (
    STALE_HOURS,
    RegistryError,
    check_alias,
    check_ref,
    clean_abandoned,
    list_versions,
    register_once,
)
from birdray.registry.views import (
    is_package_dir,
    promote,
    rollback,
    set_alias,
    version_metadata,
    version_of,
)

ACTIONS = ("list", "show", "add", "promote", "rollback", "alias", "clean")
USAGE = (
    "birdray registry list | show [REF] | add PACKAGE [--promote] | promote [REF] | "
    "rollback [--alias NAME] | alias list | alias set NAME REF | clean [--stale-hours H]"
)


@dataclass
class RegistryConfig:
    positional = "action"
    positional_rest = "args"
    action: str = field("list", "list | show | add | promote | rollback | alias | clean")
    args: list[str] = field([], "the action's words: show REF, add PACKAGE, alias set NAME REF")
    registry: str = field("runs/registry", "registry folder or URI")
    version: str = field("production", "show/promote: vNNNN | latest | an alias (candidate, ...)")
    alias: str = field(PRODUCTION, "rollback: the alias to move back")
    promote: bool = field(False, "add: also make the new version production")
    stale_hours: float = field(
        STALE_HOURS, "clean: remove never-committed versions claimed longer ago than this"
    )


def list_rows(registry: str) -> list[dict[str, Any]]:
    """One row per committed version (metadata only: no weights are downloaded)."""
    aliases = {name: a["version"] for name, a in read_aliases(registry).items()}
    rows = []
    for version in list_versions(registry):
        named = [name for name, v in aliases.items() if v == version]
        try:
            meta = version_metadata(registry, version)
            top1 = meta.metrics.get("test_top1", meta.metrics.get("val_top1"))
            rows.append(
                {
                    "version": version,
                    "arch": meta.arch,
                    "top1": top1,
                    "temperature": meta.temperature,
                    "production": PRODUCTION in named,
                    "aliases": named,
                }
            )
        except (ModelError, RegistryError, OSError) as exc:
            rows.append({"version": version, "error": str(exc), "aliases": named})
    return rows


def add(registry: str, package: str, also_promote: bool) -> dict[str, Any]:
    """Register a trained package folder afterwards (once per weights); maybe promote it."""
    if not is_package_dir(package):
        raise RegistryError(f"{package!r} is not a model package folder (no metadata.json)")
    if not storage.is_remote(registry) and storage.local_path(registry).is_file():
        raise RegistryError(f"no registry at {registry}: it is a file, not a folder")
    version, added = register_once(registry, package, {"source": str(Path(package).resolve())})
    out: dict[str, Any] = {"version": version, "added": added}
    if also_promote:
        out["production"] = promote(registry, version)["version"]
    return out


def _alias(cfg: RegistryConfig, words: list[str]) -> Any:
    if words in ([], ["list"]):
        return read_aliases(cfg.registry)
    if words[0] == "set" and len(words) == 3:
        name, ref = check_alias(words[1]), check_ref(words[2])
        return set_alias(cfg.registry, name, version_of(ref, cfg.registry))
    raise RegistryError(f"usage: {USAGE}")


def run_registry(cfg: RegistryConfig) -> Any:
    """Inspect the registry, register a package, or move an alias (production by default)."""
    if cfg.action not in ACTIONS:
        raise RegistryError(f"unknown registry action {cfg.action!r} (usage: {USAGE})")
    words = list(cfg.args or [])
    if cfg.action == "alias":
        return _alias(cfg, words)
    if cfg.action == "add":
        if len(words) != 1:
            raise RegistryError(f"usage: {USAGE}")
        return add(cfg.registry, words[0], cfg.promote)
    if len(words) > 1 or (words and cfg.action in ("list", "rollback", "clean")):
        raise RegistryError(f"usage: {USAGE}")
    ref = check_ref(words[0] if words else cfg.version)  # a typo is one clear line, nothing read
    if cfg.action == "list":
        return list_rows(cfg.registry)
    if cfg.action == "clean":
        return clean_abandoned(cfg.registry, cfg.stale_hours)
    if cfg.action == "show":
        return asdict(version_metadata(cfg.registry, version_of(ref, cfg.registry)))
    if cfg.action == "promote":  # promote candidate: production takes candidate's version
        return promote(cfg.registry, version_of(ref, cfg.registry))
    return rollback(cfg.registry, check_alias(cfg.alias))
