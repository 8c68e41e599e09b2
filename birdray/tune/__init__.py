"""Ray Tune model comparison: the sweep, its comparison report, and the hand-off to the registry."""
