"""The layout shows the data path: every import between vlmtrain's packages points one way along it, and no
module grows past a size one can read in a sitting."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlmtrain"
# Leaves first; a package may import only those before it. tiny/embedded build the offline default models
# (families-level knowledge); generate, inspect and cli are leaves that read the same row type.
ORDER = ("errors", "paths", "log", "devices", "config", "families", "tiny", "embedded", "media", "render", "mask",
         "formats", "data", "collate", "pack", "generate", "train", "eval", "launch", "inspect", "cli", "__main__")
TABLES = {"tiny/specs.py", "families/registry.py"}  # declarative tables of data, exempt from the size limit
MAX_LINES = 400


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlmtrain."):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("vlmtrain.")]
    return out


def test_every_package_is_placed_on_the_data_path() -> None:
    found = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert found <= set(ORDER), f"place these in tests/test_layout.py ORDER: {sorted(found - set(ORDER))}"


def test_imports_point_one_way() -> None:
    backwards = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        mine = rel.parts[0].removesuffix(".py")
        for line, module in _imports(path):
            theirs = _layer(module)
            if theirs != mine and ORDER.index(theirs) > ORDER.index(mine):
                backwards.append(f"vlmtrain/{rel}:{line} ({mine}) imports {module} ({theirs})")
    assert not backwards, "imports against the data path:\n" + "\n".join(backwards)


def test_no_module_is_over_the_size_limit() -> None:
    long = [f"vlmtrain/{p.relative_to(PACKAGE)}: {n} lines" for p in sorted(PACKAGE.rglob("*.py"))
            if str(p.relative_to(PACKAGE)) not in TABLES
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, long
