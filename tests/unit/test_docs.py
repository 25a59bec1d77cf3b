"""The documents match the code (issues 19 item 5, 20 item 12): every module or folder that
docs/flow.md or docs/architecture.md names exists, every relative link resolves inside the
repository, and the README lists every command and exit code and a try-out that works on 2525."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailgate.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "mailgate"
MODULE = re.compile(r"`([a-z_]+(?:/[a-z_]+)*\.py|[a-z_]+/)`")


def named_modules(document: Path) -> set[str]:
    return set(MODULE.findall(document.read_text()))


def missing_modules(text: str) -> list[str]:
    """Names that exist nowhere they could mean: a path from src/mailgate/, or a bare `x.py` in
    the top level or in a folder its section heading or its paragraph (or bullet) names."""
    missing = []
    for section in re.split(r"\n(?=## )", text):
        heading_folders = {name for name in MODULE.findall(section.split("\n", 1)[0]) if name.endswith("/")}
        for paragraph in re.split(r"\n\s*\n|\n- ", section):
            missing += _missing_in(MODULE.findall(paragraph), heading_folders)
    return sorted(set(missing))


def _missing_in(names: list[str], heading_folders: set[str]) -> list[str]:
    missing = []
    folders = {""} | heading_folders | {name.split("/")[0] + "/" for name in names if "/" in name}
    for name in names:
        candidates = [name] if "/" in name else [folder + name for folder in folders]
        if not any((PACKAGE / candidate).exists() for candidate in candidates):
            missing.append(name)
    return missing


@pytest.mark.parametrize("document", ["flow.md", "architecture.md"])
def test_every_module_a_document_names_exists(document: str) -> None:
    text = (ROOT / "docs" / document).read_text()
    assert len(MODULE.findall(text)) > 10
    missing = missing_modules(text)
    assert missing == [], f"docs/{document} names modules that do not exist: {missing}"


def test_a_module_that_does_not_exist_is_found() -> None:
    assert missing_modules("`server/` has `session.py` and `gone.py`; `queue/nowhere.py`") == [
        "gone.py", "queue/nowhere.py"]


def test_architecture_names_every_top_level_module_and_package() -> None:
    names = named_modules(ROOT / "docs" / "architecture.md")
    text = (ROOT / "docs" / "architecture.md").read_text()
    for path in PACKAGE.iterdir():
        if path.name.startswith("_") or path.name == "py.typed":
            continue
        name = path.name + "/" if path.is_dir() else path.name
        assert name in names or f"\n{name}" in text, f"docs/architecture.md does not mention {name}"


@pytest.mark.parametrize("document", ["README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_resolve_inside_the_repository(document: str) -> None:
    path = ROOT / document
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{document} links outside the repository: {target}"
        assert resolved.exists(), f"{document} links to a missing file: {target}"


def test_readme_lists_every_command_and_exit_code() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    missing = [name for name in commands if f"`mailgate {name}" not in readme]
    assert missing == [], f"README's command list misses {missing}"
    assert "3 inconclusive" in readme


def test_readme_try_out_talks_to_port_2525() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python3 -m smtplib" not in readme  # it connects to port 25 and fails
    assert "smtplib.SMTP('127.0.0.1', 2525)" in readme
