"""The house keeps its plan: rooms import downward only, no import circles, every module says its
layer, statuses and modes are spelled once, and no module grows past 400 lines.

The rooms of ``harness/`` (installed as ``attnbench``), bottom to top: ``case`` (what a case is),
``plugins`` (the contract and the registry), ``measure`` (one pair measured and judged),
``sweep`` (how a sweep runs), ``results`` (how results are read back), then the command line
and the public API. ``implementations/`` are plugins of the package: they may import ``case``,
``plugins`` and ``measure``. Every import statement counts, those inside functions and under
``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

from attnbench.case.modes import MODES
from attnbench.case.problem import FEATURES
from attnbench.case.status import STATUSES

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("case", "plugins", "measure", "sweep", "results")
TOP = len(ROOMS)  # the command line (and its entry point), the public API and the package's own __init__
IMPLEMENTATIONS = 2.5  # above measure, below sweep
SENTENCE = {
    "case": "Layer ``case``: imports nothing of attnbench outside ``attnbench.case``.",
    "plugins": "Layer ``plugins``: imports ``attnbench.case`` and ``attnbench.plugins`` only.",
    "measure": "Layer ``measure``: imports ``attnbench.case``, ``attnbench.plugins`` and ``attnbench.measure`` only.",
    "sweep": "Layer ``sweep``: imports the rooms below it (``case``, ``plugins``, ``measure``) and"
    " ``attnbench.sweep``; never ``results``.",
    "results": "Layer ``results``: imports any room below it; only the command line and the public API import it.",
    "top": "Layer ``top``: may import any room.",
    "implementations": "Layer ``implementations``: imports ``attnbench.case``, ``attnbench.plugins`` and"
    " ``attnbench.measure`` only.",
}
#: Where a status or mode name may be written as a string: its declaration.
DECLARATIONS = {"harness/case/status.py", "harness/case/modes.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts = ["attnbench", *parts[1:]] if parts[0] == "harness" else ["attnbench", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    found = {}
    for base in ("harness", "implementations"):
        for path in sorted((ROOT / base).rglob("*.py")):
            found[module_name(path)] = path
    return found


MODULES = sources()


def imports(path: Path, known: Iterable[str]) -> set[str]:
    """The attnbench modules a file imports (``from attnbench.x import y`` names module ``x.y``
    where that is a module, else ``x``), wherever the statement stands."""
    known = set(known)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("attnbench"):
                    found.add(alias.name if alias.name in known else alias.name.rsplit(".", 1)[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("attnbench"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else str(node.module))
    return {m for m in found if m in known}


def graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def rank(name: str) -> float:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "api", "launch", "listing", "profiling", "usage", "__main__"):
        return TOP
    if parts[1] == "implementations":
        return IMPLEMENTATIONS
    if parts[1] == "suites":  # data: the shipped TOML suites
        return 0
    return ROOMS.index(parts[1])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                part = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    part.append(member)
                    if member == node:
                        break
                if len(part) > 1:
                    found.append(sorted(part))
    return found


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a module into a room above its own."""
    return sorted((a, b) for a, targets in edges.items() for b in targets if b != "attnbench" and rank(b) > rank(a))


EDGES = graph(MODULES)


def test_there_is_no_import_circle_anywhere_in_the_package() -> None:
    assert cycles(EDGES) == []


def test_every_import_goes_down_the_rooms() -> None:
    assert upward(EDGES) == []


def test_the_checks_find_a_planted_circle_and_a_planted_upward_import() -> None:
    planted = {**EDGES, "attnbench.case.problem": EDGES["attnbench.case.problem"] | {"attnbench.case.keys"}}
    assert ["attnbench.case.keys", "attnbench.case.problem"] in cycles(planted)
    planted = {**EDGES, "attnbench.measure.timing": EDGES["attnbench.measure.timing"] | {"attnbench.sweep.runner"}}
    assert ("attnbench.measure.timing", "attnbench.sweep.runner") in upward(planted)


def room_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    if parts[0] == "implementations":
        return "implementations"
    return "top" if len(parts) == 2 else parts[1]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_opens_with_what_it_holds_and_ends_with_its_layer(name: str) -> None:
    path = MODULES[name]
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    assert len(paragraphs) >= 2, f"{path}: a docstring saying what it holds, then its layer"
    assert paragraphs[-1] == SENTENCE[room_of(path)], f"{path}: its last paragraph must be its layer's sentence"


def string_constants(path: Path) -> list[tuple[int, str, ast.Constant, ast.AST]]:
    """``(line, value, node, tree)`` of every string constant outside f-strings and docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in ast.walk(node)}
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            skip.add(id(body[0].value))  # a docstring
    return [
        (n.lineno, n.value, n, tree)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
    ]


def names_a_feature(node: ast.Constant, tree: ast.AST) -> bool:
    """A feature name where features are declared or tested: an element of a set, tuple or list,
    a dict key, or the left of ``in`` (``"decode" not in impl.features``)."""
    if node.value not in FEATURES:
        return False
    for parent in ast.walk(tree):
        if isinstance(parent, ast.Set | ast.Tuple | ast.List) and any(e is node for e in parent.elts):
            return True
        if isinstance(parent, ast.Dict) and any(k is node for k in parent.keys):
            return True
        if isinstance(parent, ast.Compare) and parent.left is node and isinstance(parent.ops[0], ast.In | ast.NotIn):
            return True
    return False


def spelled_outside_declarations(modules: dict[str, Path]) -> list[str]:
    names = set(STATUSES) | set(MODES)
    found = []
    for path in modules.values():
        rel = path.relative_to(ROOT).as_posix()
        if rel in DECLARATIONS:
            continue
        for line, value, node, tree in string_constants(path):
            if value in names and not names_a_feature(node, tree):
                found.append(f"{rel}:{line}: {value!r}")
    return found


def test_no_status_or_mode_name_is_written_as_a_string_outside_its_declaration() -> None:
    """Statuses are ``Status`` members, modes are asked what they do (``reads_cache``) and named
    through their declaration (``FORWARD.name``); ``backward`` and ``decode`` may be written as
    the features they also are."""
    assert spelled_outside_declarations(MODULES) == []


def test_the_literal_check_finds_a_planted_status_and_mode(tmp_path: Path) -> None:
    planted = ROOT / "harness" / "_planted_for_test.py"
    planted.write_text('"""x"""\n\nif record["status"] == "oom" or case["mode"] == "forward":\n    pass\n')
    try:
        found = spelled_outside_declarations({"attnbench._planted_for_test": planted})
    finally:
        planted.unlink()
    assert [f.split(": ")[1] for f in found] == ["'oom'", "'forward'"]


def test_the_features_a_case_uses_are_derived_in_one_place() -> None:
    """Only :meth:`attnbench.case.problem.Problem.uses` maps a case to its features."""
    derives = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            keys = {k.value for k in getattr(node, "keys", []) if isinstance(k, ast.Constant)}
            if isinstance(node, ast.Dict) and {"gqa", "cross", "backward"} <= keys:
                derives.append(name)
    assert derives == ["attnbench.case.problem"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_400_lines(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= 400, f"{MODULES[name]}: {lines} lines"


def test_every_folder_of_the_package_is_installed() -> None:
    """Each folder of harness/ with an __init__.py is a package pyproject.toml installs."""
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(p) for p in (ROOT / "harness").rglob("__init__.py")}
    assert folders <= declared, sorted(folders - declared)


def test_every_installed_package_is_a_folder() -> None:
    """Each package pyproject.toml names is a folder with an __init__.py: a stale name breaks the install."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots: dict[str, str] = setuptools["package-dir"]
    missing = []
    for package in setuptools["packages"]:
        parts = package.split(".")
        # the longest declared prefix decides the folder, as setuptools does
        prefix = max((k for k in roots if package == k or package.startswith(k + ".")), key=len)
        folder = ROOT / roots[prefix] / Path(*parts[len(prefix.split(".")) :])
        if not (folder / "__init__.py").is_file():
            missing.append(package)
    assert not missing, missing
