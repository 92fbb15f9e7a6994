"""The README's file table names every module, and names nothing that is not there."""
import re

from conftest import REPO_ROOT

FOLDERS_NAMED_WHOLE = ("tests", "bench", "docs")  # one line each; their files are not modules of the product


def modules_on_disk() -> set[str]:
    scripts = {path.name for path in REPO_ROOT.glob("*.py")}
    package = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "smolm135").rglob("*.py")
               if path.name != "__init__.py"}
    return scripts | package


def file_table() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Files", 1)[1]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE)


def test_the_file_table_names_every_module_once_and_only_what_exists():
    named = file_table()
    assert len(named) == len(set(named)), "a file is named twice"
    modules = {name for name in named if name.rstrip("/") not in FOLDERS_NAMED_WHOLE}
    assert modules == modules_on_disk(), (f"missing from the table: {sorted(modules_on_disk() - modules)}; "
                                          f"named but not there: {sorted(modules - modules_on_disk())}")
    assert {name.rstrip("/") for name in named} >= set(FOLDERS_NAMED_WHOLE)


def test_every_document_the_readme_links_exists():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        assert (REPO_ROOT / link).exists(), link
