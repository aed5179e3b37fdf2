"""pytest fixtures for apps using pyramid_pgstore: see :mod:`pytest_pgstore.plugin`."""
