"""Console scripts: ``pgstore-cleanup``."""
