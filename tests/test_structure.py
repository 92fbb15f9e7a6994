"""The package shows its stages, and imports run one way: a module imports only from its own stage or an earlier
one, no module imports itself round a cycle, the model file imports nothing of the package, nothing imports
a script, and what the suite imports as it is collected comes with the README's install."""
import ast
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = "smolm135"
# Earlier stages first. A module may import from its own stage and from earlier ones, never from a later one.
STAGES = (
    ("smolm135.errors", "smolm135.runtime"),  # leaves: user errors, device, precision, probes, disk writes
    ("smolm135.data",),  # documents, tokenizers, token cache, batches
    ("smolm135.checkpoint", "smolm135.lora", "smolm135.loss_plot"),  # what a run leaves behind
    ("smolm135.interop",),  # other formats in and out, one loader for any model
    ("smolm135.inference",),  # generation, scoring, evaluation, the demo
    ("smolm135.training",),  # recipes, optimizers, the run, the loop
)
MODEL_FILES = ("smollm135_model", "modeling_smolm135")
SCRIPTS = ("Model_smollm135_trainer", "continue_training", "evaluate", "convert_to_hf", "app")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, relative imports made absolute."""
    own = module_name(path).split(".")
    package = own if path.name == "__init__.py" else own[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # from package import module
    return found


def project_modules() -> dict[str, Path]:
    files = [*(REPO_ROOT / PACKAGE).rglob("*.py"), *(REPO_ROOT / f"{name}.py" for name in MODEL_FILES)]
    return {module_name(path): path for path in files}


def stage_of(module: str) -> int | None:
    return next((rank for rank, prefixes in enumerate(STAGES)
                 if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)), None)


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: {imported for imported in imported_modules(path) if imported in modules and imported != name}
            for name, path in modules.items()}


def test_every_module_of_the_package_belongs_to_a_stage():
    unplaced = [name for name in project_modules() if name.startswith(PACKAGE + ".") and stage_of(name) is None]
    assert unplaced == []


def test_imports_run_from_later_stages_to_earlier_ones_only():
    backwards = [f"{name} (stage {stage_of(name)}) imports {imported} (stage {stage_of(imported)})"
                 for name, imports in import_graph().items() if stage_of(name) is not None
                 for imported in imports if stage_of(imported) is not None and stage_of(imported) > stage_of(name)]
    assert backwards == []


def test_no_module_imports_itself_round_a_cycle():
    graph = import_graph()
    cycles = []

    def visit(name, path):
        for imported in graph[name]:
            if imported in path:
                cycles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported not in done:
                visit(imported, path + [imported])
        done.add(name)

    done = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert cycles == []


def test_the_model_file_imports_nothing_of_the_package():
    for name in MODEL_FILES:
        assert not any(module.startswith(PACKAGE) for module in imported_modules(REPO_ROOT / f"{name}.py")), name


def test_nothing_imports_a_script():
    importers = [f"{path.relative_to(REPO_ROOT)} imports {module}"
                 for path in REPO_ROOT.rglob("*.py") if ".git" not in path.parts and path.stem not in SCRIPTS
                 for module in imported_modules(path) if module.split(".")[0] in SCRIPTS]
    assert importers == []


def test_each_script_only_parses_its_arguments_and_calls_the_package():
    for script in SCRIPTS:
        tree = ast.parse((REPO_ROOT / f"{script}.py").read_text(encoding="utf-8"))
        assert not [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))], script


# ---------------------------------------------------------------- what the README's install must bring

INSTALL_FILES = ("requirements.txt", "requirements-dev.txt")  # the README's install, with the test tools
OUR_TOP_LEVEL_NAMES = {PACKAGE, *MODEL_FILES, "bench", "conftest", "hub_fakes"}


def top_level_imports(path: Path) -> set[str]:
    """The top-level names of what `path` imports when it is imported (its module body, conditional or not);
    imports inside functions run only when they are called, and may name an optional extra."""
    found, bodies = set(), [ast.parse(path.read_text(encoding="utf-8")).body]
    while bodies:
        for node in bodies.pop():
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.add(node.module.split(".")[0])
            elif isinstance(node, (ast.If, ast.Try)):
                bodies += [node.body, node.orelse, *(handler.body for handler in getattr(node, "handlers", []))]
    return found


def installed_by(requirement_files: tuple[str, ...]) -> set[str]:
    """The distributions those files name, and everything they need in turn (as installed here), normalized."""
    from importlib.metadata import PackageNotFoundError, requires
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [line.split("#")[0].strip() for name in requirement_files
             for line in (REPO_ROOT / name).read_text(encoding="utf-8").splitlines()]
    todo, found = [canonicalize_name(Requirement(line).name) for line in lines if line], set()
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            needs = [Requirement(text) for text in requires(name) or []]
        except PackageNotFoundError:  # an optional dependency of something installed, not installed here
            continue
        todo += [canonicalize_name(need.name) for need in needs
                 if need.marker is None or need.marker.evaluate({"extra": ""})]
    return found


def test_every_module_the_tests_import_when_collected_comes_with_the_readmes_install():
    """The suite collects where only the README's install was run: no test file, nor anything it imports at
    collection, imports an optional extra (or anything else no requirements file names) at module level."""
    from importlib.metadata import packages_distributions
    from packaging.utils import canonicalize_name

    installed, distributions = installed_by(INSTALL_FILES), packages_distributions()
    files = [*(REPO_ROOT / "tests").glob("*.py"), *(REPO_ROOT / PACKAGE).rglob("*.py"), *REPO_ROOT.glob("*.py"),
             *(REPO_ROOT / "bench").rglob("*.py")]
    missing = sorted(f"{path.relative_to(REPO_ROOT)} imports {name}" for path in files
                     for name in top_level_imports(path)
                     if name not in sys.stdlib_module_names and name not in OUR_TOP_LEVEL_NAMES
                     and not name.startswith("test_")
                     and not {canonicalize_name(d) for d in distributions.get(name, [])} & installed)
    assert missing == [], f"not installed by {' and '.join(INSTALL_FILES)}: move the import into the test or function"


def test_a_built_in_model_is_named_by_its_owner_wherever_the_owner_may_be_imported():
    """smolm135.interop.pretrained owns the built-in names; a later stage (or a bench) that spells one in its own
    strings would keep pointing at it after a rename. (Earlier stages cannot import the owner: their messages
    may name it.)"""
    from smolm135.interop.pretrained import BUILTIN_MODELS

    owner = "smolm135.interop.pretrained"
    readers = {name: path for name, path in project_modules().items()
               if name != owner and (stage_of(name) or 0) >= stage_of(owner)}
    readers |= {module_name(path): path for path in (REPO_ROOT / "bench").glob("*.py")}
    spelled = [f"{name} spells {builtin!r}" for name, path in sorted(readers.items())
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               for builtin in BUILTIN_MODELS if builtin in node.value]
    assert spelled == []


def test_pip_installs_every_stage_and_the_model_files_and_no_script():
    """A stage left out of pyproject.toml works in the checkout and is missing once installed; a script installed
    as a top-level module would take a name other packages own (lm-evaluation-harness imports HF's `evaluate`)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    packages = {module_name(path) for path in (REPO_ROOT / PACKAGE).rglob("__init__.py")}
    assert set(setuptools["packages"]) == packages
    assert set(setuptools["py-modules"]) == set(MODEL_FILES) and not set(SCRIPTS) & set(setuptools["py-modules"])
