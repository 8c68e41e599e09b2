"""Model creation, preprocessing, the model package and calibrated inference."""
