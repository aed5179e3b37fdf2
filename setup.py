import os

from setuptools import find_packages, setup

here = os.path.abspath(os.path.dirname(__file__))
with open(os.path.join(here, "README.rst"), encoding="utf-8") as f:
    README = f.read()

requires = [
    "pyramid>=2.0",
    "webob>=1.8",
    # The binary wheel: installs with no compiler and no libpq headers (see README).
    "psycopg2-binary>=2.9",
    # For the pytest plugin that ships with the package (pytest_pgstore).
    "pytest-postgresql>=10",
]

testing_extras = [
    "pytest>=8",
    "pytest-xdist>=3",
    "WebTest>=3",
    "waitress>=3",
    "ruff",
]

setup(
    name="pyramid_pgstore",
    version="0.2.0.dev0",
    description="Server-side Pyramid sessions stored in PostgreSQL",
    long_description=README,
    long_description_content_type="text/x-rst",
    classifiers=[
        "Framework :: Pyramid",
        "Framework :: Pytest",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Programming Language :: Python :: 3.14",
        "Topic :: Database",
        "Topic :: Internet :: WWW/HTTP :: Session",
    ],
    keywords="pyramid session postgresql pytest",
    license="MIT",
    packages=find_packages(exclude=["tests", "tests.*", "bench"]),
    zip_safe=False,
    # Current pyramid (2.1) supports 3.10+, current pytest-postgresql (10) 3.11+.
    python_requires=">=3.11",
    install_requires=requires,
    extras_require={"testing": testing_extras},
    entry_points={
        "paste.app_factory": ["main = pyramid_pgstore.demo:main"],
        "pytest11": ["pgstore = pytest_pgstore.plugin"],
        "console_scripts": [
            "pgstore-cleanup = pyramid_pgstore.scripts.cleanup:main",
            "pgstore-schema = pyramid_pgstore.scripts.schema:main",
            "pgstore-pg-ctl = pyramid_pgstore.localdb:pg_ctl_main",
        ],
    },
)
