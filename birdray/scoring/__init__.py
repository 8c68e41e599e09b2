"""Offline batch scoring: image folders (or an ingested split) to one prediction row per file.

``birdray.scoring.job`` holds the job's config and driver; this package holds its parts: where the
files come from (``sources``), the Ray Data stages that decode and score them (``stages``), the
atomic output folder (``output``) and the optional explanations (``explanations``).
"""
