"""Deploy bundle: the run's model files, manifest, signature."""
