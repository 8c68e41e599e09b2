"""The attribution methods by name: what flags and forms offer, importable without torch."""

METHODS = ("gradcam", "saliency", "integrated_gradients", "gradcam_early")
