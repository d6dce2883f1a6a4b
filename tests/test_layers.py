"""The package's layers (README: "Layout"), read from the README's diagram and enforced on the
code: every folder of src/ewcexp sits in exactly one layer; a module imports only from a lower
layer or its own folder; no two modules import each other, even through others; every
module says what it is (a docstring); and every config option's `_target_` names code of
the folder the README maps its group to, and exists.

Every import counts, wherever it is written: at the top, inside a function, or under
`if TYPE_CHECKING:`. A `_target_` string is not an import (Hydra resolves it at run time)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from tests.conftest import REPO

PACKAGE = "ewcexp"
SOURCE = REPO / "src" / PACKAGE
CONF = SOURCE / "conf"  # configs, not code: in no layer


# ---------------------------------------------------------------- the README's diagram


@dataclass(frozen=True)
class Layer:
    rank: int  # 1 is the lowest
    folders: tuple[str, ...]  # packages under src/ewcexp, of the same rank
    modules: tuple[str, ...]  # top-level files (src/ewcexp/*.py), counted in the first folder


def layout_section(readme: str) -> str:
    return readme.split("## Layout\n", 1)[1].split("\n## ", 1)[0]


LAYER_LINE = re.compile(r"[\s│|]*(\d+)\s+(.*)")  # box-drawing borders allowed around it


def diagram(section: str) -> str:
    block = re.search(r"<!-- layers -->\s*```[a-z]*\n(.*?)```", section, re.S)
    assert block, 'README "Layout" has no fenced block after "<!-- layers -->"'
    return block.group(1)


def parse_layers(section: str) -> list[Layer]:
    """The layers of the diagram: the fenced block after the line `<!-- layers -->`. A layer is
    a line `<rank>  <folder>/ [<folder>/ ...] [<file>.py ...]  [anything else]`; the other
    lines of the block (borders, captions) are drawing. Returned lowest first."""
    layers = []
    for line in diagram(section).splitlines():
        found = LAYER_LINE.match(line)
        if found:
            rest = found.group(2)
            layers.append(
                Layer(
                    int(found.group(1)),
                    tuple(re.findall(r"(?<![\w/.])(\w+)/(?!\S)", rest)),
                    tuple(re.findall(r"(?<![\w.])(\w+)\.py\b", rest)),
                )
            )
    return sorted(layers, key=lambda layer: layer.rank)


def parse_group_targets(section: str, package: str = PACKAGE) -> dict[str, str]:
    """The README's table of config groups: `conf/<group>/` → the folder its `_target_`s name,
    from rows `| `conf/<group>/` | `<package>.<folder>` |`."""
    rows = re.findall(rf"^\|\s*`conf/([\w/]+?)/`\s*\|\s*`{package}\.(\w+)`", section, re.M)
    return dict(rows)


def readme_layout() -> str:
    return layout_section((REPO / "README.md").read_text())


def groups_of(layers: list[Layer]) -> tuple[dict[str, int], dict[str, str]]:
    """Rank of each folder; and the folder each top-level module counts in."""
    rank = {folder: layer.rank for layer in layers for folder in layer.folders}
    top = {module: layer.folders[0] for layer in layers for module in layer.modules}
    return rank, top


# ---------------------------------------------------------------- the imports in the code


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    file: Path
    line: int
    target: str  # the imported module, dotted (a submodule where `from x import y` names one)


def module_files(root: Path, package: str, skip: tuple[Path, ...] = ()) -> dict[str, Path]:
    """Every module of the package under `root` (its folder), by dotted name."""
    modules = {}
    for file in sorted(root.rglob("*.py")):
        if any(file.is_relative_to(folder) for folder in skip):
            continue
        parts = file.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = file
    return modules


def collect_imports(modules: dict[str, Path], package: str) -> list[Import]:
    """The imports of the package's own modules, from every module: absolute and relative,
    `import a.b`, `from a.b import c` (to a.b.c where that is a module, else to a.b), and
    `importlib.import_module("a.b")` with a literal name."""
    found = []
    for name, file in modules.items():
        is_package = file.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                targets = [node.args[0].value]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    found.append(Import(name, file, node.lineno, owner(target, modules)))
    return found


def owner(target: str, modules: dict[str, Path]) -> str:
    """The module an import loads: `import a.b.C`-like names fall back to the nearest module."""
    while target not in modules and "." in target:
        target = target.rpartition(".")[0]
    return target


def group_of(module: str, package: str, top: dict[str, str]) -> str:
    """The folder a module belongs to (`ewcexp.data.images` → data); a top-level module
    (`ewcexp`, `ewcexp.report`) counts in the folder the diagram lists its file under."""
    parts = module.split(".")[1:]
    if len(parts) >= 2 or (parts and parts[0] not in top):
        return parts[0]  # a folder's module, or a file the README does not list
    return top.get(parts[0] if parts else "__init__", "__init__")


def layer_violations(
    imports: list[Import], rank: dict[str, int], top: dict[str, str], package: str, base: Path
) -> list[str]:
    """Each import of a higher layer, or of another folder of the same rank."""
    problems = []
    for imp in imports:
        source = group_of(imp.source, package, top)
        target = group_of(imp.target, package, top)
        if source == target:
            continue
        where = f"{imp.file.relative_to(base)}:{imp.line} imports {imp.target}"
        if source not in rank or target not in rank:
            problems.append(f"{where}: {source} or {target} is in no layer")
        elif rank[target] > rank[source]:
            problems.append(
                f"{where}: layer {rank[target]} ({target}) from layer {rank[source]} ({source})"
            )
        elif rank[target] == rank[source]:
            problems.append(f"{where}: {target} and {source} are of the same rank {rank[source]}")
    return problems


def import_cycles(imports: list[Import]) -> list[str]:
    """Each group of modules that import each other, directly or through others (a strongly
    connected component, Tarjan's algorithm), shown as one cycle through it with its lines."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
        edges.setdefault(imp.target, {})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth ≤ the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in edges[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [describe_cycle(sorted(c), edges) for c in components]


def describe_cycle(component: list[str], edges: dict[str, dict[str, Import]]) -> str:
    """A shortest cycle from the component's first module back to itself (breadth first)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier and start not in came_from:
        following = []
        for node in frontier:
            for succ in sorted(edges[node]):
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    path = [start]
    while True:
        path.append(came_from[path[-1]])
        if path[-1] == start:
            break
    path.reverse()  # start → ... → start
    steps = [f"{a} (line {edges[a][b].line}) → {b}" for a, b in zip(path, path[1:], strict=False)]
    return "cycle: " + "; ".join(steps)


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def layers() -> list[Layer]:
    return parse_layers(readme_layout())


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    """Every import of an ewcexp module in src/ewcexp, walked afresh (files come and go)."""
    return collect_imports(module_files(SOURCE, PACKAGE, skip=(CONF,)), PACKAGE)


def test_every_folder_sits_in_exactly_one_layer_of_the_readme(layers):
    assert layers, "the README's diagram names no layers"
    ranks = [layer.rank for layer in layers]
    assert ranks == list(range(1, len(layers) + 1)), f"layers numbered {ranks}: want 1, 2, ..."
    named = [folder for layer in layers for folder in layer.folders]
    assert all(layer.folders for layer in layers), "a layer with no folder"
    assert len(named) == len(set(named)), f"a folder in two layers: {named}"
    folders = sorted(p.name for p in SOURCE.iterdir() if (p / "__init__.py").exists())
    folders.remove(CONF.name)
    assert sorted(named) == folders, (
        f"README layers name {sorted(named)}; src/{PACKAGE} holds {folders}"
    )
    top = sorted(p.stem for p in SOURCE.glob("*.py"))
    listed = [module for layer in layers for module in layer.modules]
    assert sorted(listed) == top, f"top-level files: README lists {listed}; there are {top}"


def test_the_diagram_is_drawn_highest_first():
    """The block lists the layers top down, so it reads like a stack: the highest on top."""
    lines = diagram(readme_layout()).splitlines()
    drawn = [int(found.group(1)) for found in map(LAYER_LINE.match, lines) if found]
    assert drawn == sorted(drawn, reverse=True)


def test_no_module_imports_a_higher_layer_or_a_folder_beside_it(layers, imports):
    rank, top = groups_of(layers)
    assert imports, "found no imports at all: the walk is broken"
    problems = layer_violations(imports, rank, top, PACKAGE, REPO)
    assert not problems, "\n".join(problems)


def test_no_import_cycles(imports):
    cycles = import_cycles(imports)
    assert not cycles, "\n".join(cycles)


def test_every_module_has_a_docstring():
    missing = [
        str(file.relative_to(REPO))
        for file in sorted(SOURCE.rglob("*.py"))
        if not ast.get_docstring(ast.parse(file.read_text()))
    ]
    assert not missing, f"modules without a docstring: {missing}"


def conf_options() -> list[tuple[str, Path, dict]]:
    """Every option of every group, as (group, file, its YAML as written, unresolved)."""
    options = []
    for file in sorted(CONF.rglob("*.yaml")):
        group = file.parent.relative_to(CONF).as_posix()
        node = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
        options.append((group, file, node if isinstance(node, dict) else {}))
    return options


def targets_in(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return found + [t for value in node.values() for t in targets_in(value)]
    if isinstance(node, list):
        return [t for value in node for t in targets_in(value)]
    return []


def test_each_config_group_targets_the_folder_the_readme_maps_it_to(layers):
    mapping = parse_group_targets(readme_layout())
    rank, _ = groups_of(layers)
    assert mapping, "the README's table of config groups is missing"
    for group, folder in mapping.items():
        assert (CONF / group).is_dir(), f"README maps conf/{group}/, which does not exist"
        assert folder in rank, f"README maps conf/{group}/ to {folder}, in no layer"
    wrong = []
    for group, file, node in conf_options():
        target = node.get("_target_")
        if not isinstance(target, str) or file.parent == CONF:
            continue  # config.yaml's nodes, presets and Hydra's settings: not a component group
        if group not in mapping:
            wrong.append(f"conf/{group}/ builds {target}, and the README's table lacks it")
        elif not target.startswith(f"{PACKAGE}.{mapping[group]}."):
            wrong.append(
                f"{file.relative_to(REPO)}: _target_ {target}, not in {PACKAGE}.{mapping[group]}"
            )
    assert not wrong, "\n".join(wrong)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # optuna's, on import
def test_every_target_in_the_configs_exists():
    targets = {
        (target, file.relative_to(REPO))
        for _, file, node in conf_options()
        for target in targets_in(node)
        if "${" not in target
    }
    assert targets, "found no _target_ in conf/"
    missing = []
    for target, file in sorted(targets):
        try:
            get_object(target)
        except Exception as error:  # any failure to resolve is the finding
            missing.append(f"{file}: {target}: {error}")
    assert not missing, "\n".join(missing)


def test_the_readme_names_only_code_that_exists():
    """Every `ewcexp.<...>` named in "Layout" and "Adding a method" exists (the example's own
    new module excepted), so that moving code cannot leave these sections behind."""
    readme = (REPO / "README.md").read_text()
    adding = readme.split("## Adding a method\n", 1)[1].split("\n## ", 1)[0]
    text = layout_section(readme) + adding
    names = set(re.findall(rf"(?<![\w/])({PACKAGE}(?:\.\w+)+)", text))
    missing = []
    for name in sorted(names):
        if "mean_one_ewc" in name:  # the module the example adds
            continue
        try:
            get_object(name)
        except Exception as error:  # any failure to resolve is the finding
            missing.append(f"{name}: {error}")
    assert not missing, "\n".join(missing)


# ---------------------------------------------------------------- the checks check


SYNTHETIC_DIAGRAM = """
## Layout

<!-- layers -->
```text
   highest
   3  top/        main.py
   2  left/  right/
   1  base/
   lowest
```

| group | targets |
|---|---|
| `conf/thing/` | `pkg.left` |
"""


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def bad_package(tmp_path: Path) -> Path:
    """A package whose every layer rule is broken once."""
    root = tmp_path / "pkg"
    write(root, "__init__.py", '"""Top."""\n')
    write(root, "main.py", '"""Top-level, counted in top/."""\nfrom pkg.top import app\n')
    write(root, "top/__init__.py", '"""Top."""\n')
    write(root, "top/app.py", '"""Fine: lower layers, its own folder."""\nimport pkg.base.core\n')
    write(root, "left/__init__.py", '"""Left."""\n')
    write(
        root,
        "left/a.py",
        '"""Beside: imports right."""\nfrom typing import TYPE_CHECKING\n'
        "if TYPE_CHECKING:\n    from pkg.right.b import B\n",
    )
    write(root, "right/__init__.py", '"""Right."""\n')
    write(root, "right/b.py", '"""Fine."""\nclass B: ...\n')
    write(root, "base/__init__.py", '"""Base."""\n')
    write(
        root,
        "base/core.py",
        '"""Upward, lazily; and a cycle."""\nfrom . import util\n\n\n'
        "def f():\n    from ..top.app import x\n    return x\n",
    )
    write(root, "base/util.py", '"""The cycle\'s other half."""\nfrom pkg.base import core\n')
    return root


def test_the_readme_parser_reads_a_diagram():
    layers = parse_layers(layout_section(SYNTHETIC_DIAGRAM))
    assert layers == [
        Layer(1, ("base",), ()),
        Layer(2, ("left", "right"), ()),
        Layer(3, ("top",), ("main",)),
    ]
    assert parse_group_targets(layout_section(SYNTHETIC_DIAGRAM), "pkg") == {"thing": "left"}


def test_the_checks_catch_an_upward_import_a_sideways_one_and_a_cycle(bad_package: Path):
    modules = module_files(bad_package, "pkg")
    imports = collect_imports(modules, "pkg")
    rank, top = groups_of(parse_layers(layout_section(SYNTHETIC_DIAGRAM)))
    problems = layer_violations(imports, rank, top, "pkg", bad_package.parent)
    assert problems == [
        "pkg/base/core.py:6 imports pkg.top.app: layer 3 (top) from layer 1 (base)",
        "pkg/left/a.py:4 imports pkg.right.b: right and left are of the same rank 2",
    ]
    assert import_cycles(imports) == [
        "cycle: pkg.base.core (line 2) → pkg.base.util; pkg.base.util (line 2) → pkg.base.core"
    ]
    # and a clean package passes: the same one without the three mistakes
    write(bad_package, "base/core.py", '"""Fine."""\n')
    write(bad_package, "left/a.py", '"""Fine."""\nimport pkg.base.util\n')
    imports = collect_imports(module_files(bad_package, "pkg"), "pkg")
    assert not layer_violations(imports, rank, top, "pkg", bad_package.parent)
    assert not import_cycles(imports)
