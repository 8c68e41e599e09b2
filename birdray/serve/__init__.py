"""Ray Serve application: HTTP inference (and explanations) of a registered model package.

``birdray.serve.app:build_app`` is the application builder; ``birdray.serve.job`` starts it.
Submodules are imported on use so that importing ``birdray.serve`` starts nothing.
"""
