import os
import sys
from pathlib import Path

pytest_plugins = ["pytester"]

# The demo (demo/) is a folder of this checkout, not of the installed package:
# importable after the installed packages, so .ci/wheel-suite still tests the wheel.
sys.path.append(str(Path(__file__).resolve().parent.parent))

if os.environ.get("PGSTORE_TEST_INSTALLED"):
    # .ci/wheel-suite: the suite must test the installed wheel, not this checkout.
    import pyramid_pgstore
    import pytest_pgstore

    for package in (pyramid_pgstore, pytest_pgstore):
        location = Path(package.__file__).resolve()
        assert "site-packages" in location.parts, f"testing the checkout, not the wheel: {location}"
