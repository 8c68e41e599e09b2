"""The model code's one error type, importable without torch (the registry, the CLI and the
dashboard read packages' metadata and report bad ones without loading a model)."""


class ModelError(ValueError):
    """A model name, weights file or package that cannot be used."""
