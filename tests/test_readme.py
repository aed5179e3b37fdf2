"""The README is the package's PyPI page: short, its example runs, and its
links lead to pages of the documentation (docs/) that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.rst").read_text(encoding="utf-8")
DOCS_URL = "https://pyramid-pgstore.readthedocs.io/en/latest/"


def python_block(text):
    """The first ``.. code-block:: python`` of ``text``, dedented."""
    match = re.search(r"^\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text, flags=re.MULTILINE)
    return "\n".join(line[4:] for line in match.group(1).strip("\n").splitlines()) + "\n"


def test_the_readme_fits_in_200_lines_and_gives_the_repositorys_two_commands():
    assert len(README.splitlines()) <= 200
    assert "make demo" in README
    assert "make test" in README


def test_the_readme_example_passes_in_a_downstream_suite(pytester):
    pytester.makepyfile(test_sessions=python_block(README))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_quick_start_shows_the_readme_example():
    quickstart = (ROOT / "docs" / "quickstart.rst").read_text(encoding="utf-8")
    first_test = quickstart[quickstart.index("A first test\n") :]
    assert python_block(first_test) == python_block(README)


def anchors(page):
    """The ids Sphinx gives a page's sections: its labels, and its titles as slugs."""
    text = page.read_text(encoding="utf-8")
    labels = set(re.findall(r"^\.\. _([\w-]+):$", text, flags=re.MULTILINE))
    titles = re.findall(r"^(.+)\n([-=~^])\2+$", text, flags=re.MULTILINE)
    slugs = {re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") for title, _ in titles}
    return labels | slugs


def test_every_link_into_the_documentation_names_a_page_that_exists():
    links = re.findall(re.escape(DOCS_URL) + r"([^\s>`]*)", README)
    assert len(links) >= 10
    for link in links:
        name, _, anchor = link.partition("#")
        assert re.fullmatch(r"([\w-]+\.html)?", name), f"not a page of the documentation: {link}"
        page = ROOT / "docs" / (name.removesuffix(".html") or "index")
        assert page.with_suffix(".rst").is_file(), f"{DOCS_URL}{link}: no docs/{page.name}.rst"
        if anchor:
            assert anchor in anchors(page.with_suffix(".rst")), f"{DOCS_URL}{link}: no such section"
