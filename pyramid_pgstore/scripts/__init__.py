"""Console scripts: ``pgstore-cleanup``, ``pgstore-schema``, ``pgstore-sessions``."""
