import os
from pathlib import Path

pytest_plugins = ["pytester"]

if os.environ.get("PGSTORE_TEST_INSTALLED"):
    # .ci/wheel-suite: the suite must test the installed wheel, not this checkout.
    import pyramid_pgstore
    import pytest_pgstore

    for package in (pyramid_pgstore, pytest_pgstore):
        location = Path(package.__file__).resolve()
        assert "site-packages" in location.parts, f"testing the checkout, not the wheel: {location}"
