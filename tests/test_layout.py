"""The package's layout, as the Layout section of docs/contributing.rst describes it."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = ("pyramid_pgstore", "pytest_pgstore")
CONTRIBUTING = (ROOT / "docs" / "contributing.rst").read_text(encoding="utf-8")
LAYOUT = CONTRIBUTING[CONTRIBUTING.index("\nLayout\n") :]
TEST_ONLY = ("pytest", "_pytest", "pytest_pgstore", "pytest_postgresql", "webtest", "demo")


def modules(package):
    """Dotted module name -> path, for every module of ``package``."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name, path):
    """Every module ``name`` imports (TYPE_CHECKING and function-level ones too),
    with the names it takes from each."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(base, alias.name) for alias in node.names]
    return found


def internal_graph(package="pyramid_pgstore"):
    """Module -> the modules of the same package it imports."""
    own = modules(package)
    graph = {}
    for name, path in own.items():
        targets = set()
        for module, imported in imports(name, path):
            if f"{module}.{imported}" in own:
                targets.add(f"{module}.{imported}")
            elif module in own:
                targets.add(module)
        graph[name] = targets - {name}
    return graph


def test_every_module_is_in_the_layout():
    listed = set(re.findall(r"^``([\w/.]+)``", LAYOUT, flags=re.MULTILINE))
    for package in PACKAGES:
        for name, path in modules(package).items():
            relative = path.relative_to(ROOT).as_posix()
            folder = path.parent.relative_to(ROOT).as_posix() + "/"
            if path.name == "__init__.py" and name != "pyramid_pgstore":
                continue  # a subpackage is listed as its folder; the plugin's holds nothing
            assert relative in listed or folder in listed, (
                f"{relative} is not in the Layout of docs/contributing.rst"
            )


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports_only_modules_above_it_in_the_layout(package):
    order = []
    for path in re.findall(rf"^``({package}/[\w/.]*)``", LAYOUT, flags=re.MULTILINE):
        order.append(path.removesuffix(".py").removesuffix("/").removesuffix("/__init__").replace("/", "."))
    rank = {name: position for position, name in enumerate(order)}

    def listed_as(module):
        while module not in rank:
            assert "." in module, f"{module} is not in the Layout of docs/contributing.rst"
            module = module.rpartition(".")[0]
        return module

    for name, targets in internal_graph(package).items():
        if name == package:
            continue  # the public face imports from every layer
        for target in targets - {package}:
            if listed_as(target) == listed_as(name):
                continue  # within one listed folder
            assert rank[listed_as(target)] < rank[listed_as(name)], (
                f"{name} imports {target}, listed below it"
            )


@pytest.mark.parametrize("package", PACKAGES)
def test_the_package_imports_have_no_cycle(package):
    graph = internal_graph(package)
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        path.append(node)
        for target in sorted(graph[node]):
            if target != package:  # importing the package itself means its public names
                visit(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_the_product_never_imports_test_code():
    for name, path in modules("pyramid_pgstore").items():
        for module, _ in imports(name, path):
            assert module.split(".")[0] not in TEST_ONLY, f"{name} imports {module}"


def test_the_plugin_uses_only_public_names_of_the_product():
    for name, path in modules("pytest_pgstore").items():
        for module, imported in imports(name, path):
            if module.split(".")[0] != "pyramid_pgstore":
                continue
            dotted = f"{module}.{imported}" if imported else module
            private = [part for part in dotted.split(".") if part.startswith("_")]
            assert not private, f"{name} uses the private {dotted}"
