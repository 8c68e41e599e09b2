"""The one model artifact: ``model.safetensors`` + ``metadata.json``, loaded by every consumer.

Evaluation, the registry, Serve, batch scoring, explanations and the dashboard all read a model
through ``load_package``. Weights are safetensors (no pickle, so a package from elsewhere cannot
run code on load) and carry a content hash that is checked on every load; the metadata holds what
a consumer needs to use the model correctly: the class names, the timm data config (the one
preprocessing path), the calibration temperature and where the model came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from birdray import storage
from birdray.model.errors import ModelError

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"


@dataclass
class PackageMetadata:
    arch: str
    num_classes: int
    class_names: list[str]
    data_config: dict[str, Any]
    image_size: int
    temperature: float = 1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)  # manifest checksum, path, counts
    run_id: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)  # sweep, trial, checkpoint
    created_at: float = field(default_factory=time.time)
    content_hash: str = ""
    version: str | None = None  # set by the registry
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackageMetadata:
        known = {f for f in cls.__dataclass_fields__}
        missing = [
            k for k in ("arch", "num_classes", "class_names", "data_config") if k not in data
        ]
        if missing:
            raise ModelError(f"metadata.json lacks {', '.join(missing)}")
        if data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise ModelError(
                f"package schema {data['schema_version']} is newer than this birdray "
                f"({SCHEMA_VERSION}); upgrade birdray"
            )
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ModelPackage:
    path: Path
    metadata: PackageMetadata
    model: torch.nn.Module

    @property
    def name(self) -> str:
        return f"{self.metadata.arch}@{self.metadata.version or self.metadata.content_hash[:12]}"


def _model_stack() -> tuple[Any, Any]:
    """``create_model`` and ``safetensors.torch``, imported on first use: reading and checking a
    package (the registry, the CLI, a job's driver) needs neither torch nor timm, ~3 s to import
    on 2 cores. ``birdray.model.factory`` comes first: it imports the stack in its one safe order
    (``_stack.py``), so a lazy import here cannot race another thread's."""
    from birdray.model.factory import create_model

    # isort: split
    from safetensors import torch as safetensors_torch  # after the stack, on purpose

    return create_model, safetensors_torch


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unwrap DDP, make tensors contiguous CPU copies (safetensors refuses shared storage)."""
    module = getattr(model, "module", model)
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_package(out_dir: str | Path, model: torch.nn.Module, metadata: PackageMetadata) -> Path:
    """Write a package atomically: a half-written package is never visible under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    _, safetensors = _model_stack()
    try:
        safetensors.save_file(_state_dict_for_saving(model), str(tmp / WEIGHTS_FILE))
        metadata.content_hash = file_sha256(tmp / WEIGHTS_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(asdict(metadata), indent=2, default=str))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_metadata(path: str | Path) -> PackageMetadata:
    meta_path = Path(path) / METADATA_FILE
    if not meta_path.is_file():
        raise ModelError(f"not a model package (no {METADATA_FILE}): {path}")
    try:
        data = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_path} is not valid JSON: {exc}") from exc
    return PackageMetadata.from_json(data)


def check_fine_tune_source(
    path: str | Path, arch: str, class_names: list[str], dataset: str
) -> PackageMetadata:
    """A package to continue training from (its head kept) must be ``arch`` with these classes in
    this order, or every label would mean another species; its files must be intact."""
    meta = verify_package(path)
    if meta.arch != arch:
        raise ModelError(f"{path} is a {meta.arch}, not --arch {arch}")
    if list(meta.class_names) != list(class_names):
        raise ModelError(
            f"{path} was trained on other classes than {dataset} "
            f"({len(meta.class_names)} vs {len(class_names)}, or another order)"
        )
    return meta


def verify_package(path: str | Path) -> PackageMetadata:
    """Metadata of a complete, untampered package; a clear ``ModelError`` otherwise."""
    meta = read_metadata(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"model package {path} has no {WEIGHTS_FILE}")
    actual = file_sha256(weights)
    if meta.content_hash and actual != meta.content_hash:
        raise ModelError(
            f"model package {path}: weights hash {actual[:12]} does not match "
            f"metadata {meta.content_hash[:12]} (corrupt or half-written)"
        )
    return meta


def load_package(path: str | Path, device: str | torch.device = "cpu") -> ModelPackage:
    """Load and verify a package directory; the model is returned in eval mode."""
    path = Path(path)
    meta = verify_package(path)
    create_model, safetensors = _model_stack()
    model = create_model(meta.arch, num_classes=meta.num_classes, pretrained=False)
    state = safetensors.load_file(str(path / WEIGHTS_FILE), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {path} do not fit {meta.arch}: {exc}") from exc
    model.eval().to(device)
    return ModelPackage(path=path, metadata=meta, model=model)


def _check_bytes(meta: PackageMetadata, weights: bytes, path: str | Path) -> None:
    actual = hashlib.sha256(weights).hexdigest()
    if meta.content_hash and actual != meta.content_hash:
        raise ModelError(
            f"model package {path}: weights hash {actual[:12]} does not match "
            f"metadata {meta.content_hash[:12]} (corrupt or half-written)"
        )


def package_files(path: str | Path) -> dict[str, bytes]:
    """A package's files as bytes, to ship through Ray's object store to other nodes; the hash
    is checked on exactly these bytes, so the workers that load them need not check again."""
    meta = read_metadata(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"model package {path} has no {WEIGHTS_FILE}")
    files = {
        METADATA_FILE: (Path(path) / METADATA_FILE).read_bytes(),
        WEIGHTS_FILE: weights.read_bytes(),
    }
    _check_bytes(meta, files[WEIGHTS_FILE], path)
    return files


def load_package_files(
    files: dict[str, bytes], path: str | Path = "<memory>", verified: bool = False
) -> ModelPackage:
    """``load_package`` for a package held in memory: the same hash check and strict weights load.

    Workers on other machines cannot see the driver's package folder; they get the bytes instead.
    ``verified``: the bytes come from ``package_files``, which checked the hash once for all.
    """
    meta = PackageMetadata.from_json(json.loads(files[METADATA_FILE]))
    if not verified:
        _check_bytes(meta, files[WEIGHTS_FILE], path)
    create_model, safetensors = _model_stack()
    model = create_model(meta.arch, num_classes=meta.num_classes, pretrained=False)
    try:
        model.load_state_dict(safetensors.load(files[WEIGHTS_FILE]), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {path} do not fit {meta.arch}: {exc}") from exc
    return ModelPackage(path=Path(path), metadata=meta, model=model.eval())


def update_metadata(path: str | Path, **changes: Any) -> PackageMetadata:
    """Rewrite metadata fields (e.g. temperature, metrics) atomically, keeping the weights hash."""
    meta = read_metadata(path)
    for key, value in changes.items():
        if not hasattr(meta, key):
            raise ModelError(f"unknown metadata field {key!r}")
        setattr(meta, key, value)
    text = json.dumps(asdict(meta), indent=2, default=str)
    storage.write_bytes_atomic(Path(path) / METADATA_FILE, text.encode())  # a temp per writer
    return meta
