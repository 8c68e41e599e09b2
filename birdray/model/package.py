"""The one model artifact: ``model.safetensors`` + ``metadata.json``, loaded by every consumer.

Evaluation, the registry, Serve, batch scoring, explanations and the dashboard all read a model
through ``load_package``. Weights are safetensors (no pickle, so a package from elsewhere cannot
run code on load) and carry a content hash that is checked on every load; the metadata holds what
a consumer needs to use the model correctly: the class names, the timm data config (the one
preprocessing path), the calibration temperature and where the model came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from birdray import storage
from birdray.model.errors import ModelError
from birdray.model.safetensors_check import check_safetensors

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
    def from_json(cls, data: Any) -> PackageMetadata:
        """Metadata from parsed JSON, each field of the type consumers use it as: a wrong one
        (``num_classes: "many"``) is refused here, not when Serve builds the model after Ray
        has started."""
        if not isinstance(data, dict):
            raise ModelError(f"metadata.json: holds a JSON {type(data).__name__}, not an object")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ModelError(f"metadata.json: lacks {', '.join(missing)}")
        schema = data.get("schema_version", SCHEMA_VERSION)
        if not _is_int(schema):
            raise ModelError(f"metadata.json: schema_version is {schema!r}, not an integer")
        if schema > SCHEMA_VERSION:
            raise ModelError(
                f"metadata.json: package schema {schema} is newer than this birdray "
                f"({SCHEMA_VERSION}); upgrade birdray"
            )
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key, value in known.items():
            if not FIELD_TYPES[key](value):
                raise ModelError(
                    f"metadata.json: {key} is {_shown(value)}, expected {FIELD_NAMES[key]}"
                )
        if len(known["class_names"]) != known["num_classes"]:
            raise ModelError(
                f"metadata.json: {len(known['class_names'])} class_names for num_classes "
                f"{known['num_classes']}"
            )
        return cls(**known)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


PREFIX = f"{METADATA_FILE}: "  # from_json's messages; read_metadata names the whole path instead
# the fields without a default (image_size too: missing, it was a TypeError traceback)
REQUIRED = tuple(
    f.name
    for f in dataclasses.fields(PackageMetadata)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
# Per field: (the test, what the message says is expected). ``arch`` is checked for being a name
# only: whether timm knows it needs timm (and torch) imported, ~3 s; load_package says so.
_FIELDS: dict[str, tuple[Any, str]] = {
    "arch": (lambda v: isinstance(v, str) and v != "", "a timm model name"),
    "num_classes": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "class_names": (
        lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "a list of names",
    ),
    "data_config": (lambda v: isinstance(v, dict), "an object (timm's data config)"),
    "image_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "temperature": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "metrics": (lambda v: isinstance(v, dict), "an object"),
    "train_config": (lambda v: isinstance(v, dict), "an object"),
    "dataset": (lambda v: isinstance(v, dict), "an object"),
    "run_id": (lambda v: isinstance(v, str), "a string"),
    "provenance": (lambda v: isinstance(v, dict), "an object"),
    "created_at": (_is_number, "a number"),
    "content_hash": (lambda v: isinstance(v, str), "a string"),
    "version": (lambda v: v is None or isinstance(v, str), "a version name or null"),
    "schema_version": (_is_int, "an integer"),
}
FIELD_TYPES = {k: test for k, (test, _) in _FIELDS.items()}
FIELD_NAMES = {k: name for k, (_, name) in _FIELDS.items()}


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
    if meta_path.is_dir():
        raise ModelError(f"{meta_path} is a folder, not the package's metadata file")
    if not meta_path.is_file():
        raise ModelError(f"not a model package (no {METADATA_FILE}): {path}")
    try:
        data = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(f"{meta_path} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{meta_path} is not valid JSON: {exc}") from exc
    try:
        return PackageMetadata.from_json(data)
    except ModelError as exc:
        raise ModelError(f"{meta_path}: {str(exc).removeprefix(PREFIX)}") from None


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


def verify_package(path: str | Path, digest: str = "") -> PackageMetadata:
    """Metadata of a complete, untampered package; a clear ``ModelError`` otherwise.

    The weights must be a whole safetensors file (its header read: cheap) whose SHA-256 (``digest``
    if the caller has just computed it: hashing is the cost here) is the metadata's
    ``content_hash``. ``save_package`` always writes that hash, so a package without one was not
    made by birdray, or was edited: it is refused rather than trusted unchecked."""
    meta = read_metadata(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"model package {path} has no {WEIGHTS_FILE}")
    check_safetensors(weights)
    _check_hash(meta, digest or file_sha256(weights), path)
    return meta


def _check_hash(meta: PackageMetadata, actual: str, path: str | Path) -> None:
    if not meta.content_hash:
        raise ModelError(
            f"model package {path}: metadata.json has no content_hash, so its weights cannot be "
            "checked (birdray writes one into every package it saves)"
        )
    if actual != meta.content_hash:
        raise ModelError(
            f"model package {path}: weights hash {actual[:12]} does not match "
            f"metadata {meta.content_hash[:12]} (corrupt or half-written)"
        )


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
    _check_hash(meta, hashlib.sha256(weights).hexdigest(), path)


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
