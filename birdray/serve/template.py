"""A bound app with default options, for ``serve build birdray.serve.template:app``.

``serve build`` needs an ``Application`` object (not a builder), so this module binds one with
``AppArgs`` defaults and no pinned version: replicas resolve ``production`` in ``runs/registry``
when they start. Use the written YAML as a starting point; for deployments prefer
``import_path: birdray.serve.app:build_app`` with ``args`` (it pins the version at build time).
Binding only describes the app: importing this module reads no registry and loads no model.
"""

from birdray.serve.app import bind_app
from birdray.serve.args import AppArgs

_defaults = AppArgs()
app = bind_app(_defaults, _defaults.ref)
