"""The README's "How it is built" is the map of the package: it must match the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _map() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def _named_in_map(drawing: str) -> set[str]:
    """Every file or folder name the drawing's left column gives ("a.py, b.py" too)."""
    names: set[str] = set()
    for line in drawing.splitlines():
        column = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        names.update(n.strip() for n in column.split(",") if n.strip())
    return names


def test_the_map_names_every_module_and_folder_of_the_package():
    drawing = _map()
    named = _named_in_map(drawing)
    words = set(re.findall(r"[\w.]+", drawing))
    missing = []
    for path in sorted((ROOT / "relaylab").rglob("*")):
        if "__pycache__" in path.parts or path.name in ("__init__.py", "__main__.py"):
            continue
        if path.is_dir() and f"{path.name}/" not in named:
            missing.append(f"{path.relative_to(ROOT)}/")
        elif path.is_file() and path.name not in words and not _drawn_by_its_folder(path, words):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == [], "add these to README's How it is built"


def _drawn_by_its_folder(path: Path, words: set[str]) -> bool:
    """A folder drawn on one line lists its modules by name: steps/ says "basic, streaming"."""
    return path.parent.name in {"steps", "simulation", "offline_claude", "exercises"} and (
        path.stem in words
    )


def test_the_map_names_nothing_that_is_gone():
    named = _named_in_map(_map())
    files = {p.name for p in (ROOT / "relaylab").rglob("*") if "__pycache__" not in p.parts}
    folders = {f"{p.name}/" for p in ROOT.rglob("*") if p.is_dir()}
    stale = [
        n
        for n in named
        if (n.endswith(".py") and n not in files) or (n.endswith("/") and n not in folders)
    ]
    assert stale == []
