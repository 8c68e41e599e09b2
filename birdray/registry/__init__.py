"""The model registry: immutable versioned model packages and aliases (``production``, ...).

A registry is a folder or a bucket URI (any pyarrow filesystem), written the same way on both::

    <registry>/models/v0001/{model.safetensors, metadata.json, eval/...}   the package as registered
    <registry>/models/v0001/_COMMITTED                                     written last
    <registry>/models/v0004/_ABANDONED          a killed registration, cleaned (number kept)
    <registry>/models/v0001/evaluations/<id>/{eval/..., calibration.json}  later evaluations
    <registry>/models/v0001/explanations/<id>/{explain/..., _COMMITTED}    explain-eval results
    <registry>/production/<seq>-<ns>-<id>-promote-v0001.json               append-only alias log
    <registry>/aliases/candidate/<seq>-<ns>-<id>-set-v0002.json            any other alias

Nothing is ever renamed or overwritten (object stores cannot rename a folder, and two writers
must not clobber each other): see ``versions`` (register, commit marker), ``pointer`` (promotion
logs per alias), ``records`` (evaluations, explanations) and ``views`` (the local, calibrated
folder consumers load). Serve, batch scoring, explanations and the dashboard resolve an
alias/``latest``/``v0003``/a package path here.
"""

from birdray.registry.cli import RegistryConfig, run_registry
from birdray.registry.pointer import read_aliases, read_pointer
from birdray.registry.records import latest_calibration, record_evaluation, record_explanation
from birdray.registry.versions import (
    VERSION_RE,
    RegistryError,
    check_alias,
    check_ref,
    check_version,
    find_version,
    list_versions,
    register,
    register_once,
)
from birdray.registry.views import (
    check_usable,
    is_package_dir,
    local_copy,
    promote,
    resolve,
    rollback,
    set_alias,
    verified,
    version_metadata,
    version_of,
)

__all__ = [
    "VERSION_RE",
    "RegistryConfig",
    "RegistryError",
    "check_alias",
    "check_ref",
    "check_usable",
    "check_version",
    "find_version",
    "is_package_dir",
    "latest_calibration",
    "list_versions",
    "local_copy",
    "promote",
    "read_aliases",
    "read_pointer",
    "record_evaluation",
    "record_explanation",
    "register",
    "register_once",
    "resolve",
    "rollback",
    "run_registry",
    "set_alias",
    "verified",
    "version_metadata",
    "version_of",
]
