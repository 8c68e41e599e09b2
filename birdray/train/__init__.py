"""Ray Train: the recipe, the worker loop, the data pipeline and the job."""
