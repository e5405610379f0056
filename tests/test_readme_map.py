"""The README's "Map of the code" names every module of the package, in the folder it is in."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "reactor"


def map_rows() -> dict[str, set[str]]:
    """Folder (as the map's first column spells it, e.g. ``reactor/domain/``) -> modules named."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Map of the code", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`reactor/"):
            continue
        folder = cells[0].strip("`")
        rows[folder] = set(re.findall(r"`([a-z_]+\.py)`", cells[1]))
    return rows


def tree() -> dict[str, set[str]]:
    """Folder -> its modules (``__init__``/``__main__`` left out: every package has them)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts or path.name in ("__init__.py", "__main__.py"):
            continue
        folder = "reactor/" + "".join(f"{p}/" for p in path.relative_to(PACKAGE).parent.parts)
        found.setdefault(folder, set()).add(path.name)
    return found


def test_the_map_lists_every_folder_and_module_of_the_package_and_nothing_else():
    rows, actual = map_rows(), tree()
    assert sorted(rows) == sorted(actual), "folders in the map differ from the package's folders"
    for folder, modules in actual.items():
        assert rows[folder] == modules, (
            f"{folder}: missing from the map {sorted(modules - rows[folder])}, "
            f"in the map but not in the folder {sorted(rows[folder] - modules)}")
