"""The layers of ARCHITECTURE.md, enforced: walk every import (function-local ones included) and
fail on an edge that goes the wrong way."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "persona_model", "memory", "plugins")
L0 = {"runtime.events", "runtime.ports"}
# the wiring: what reads the configuration and picks concrete classes (docs/architecture.md)
# and the command line (runtime.cli and its handlers, runtime.cli_*)
L3 = {"runtime.app", "runtime.parts", "runtime.models", "runtime.embedding", "runtime.avatar_commands",
      "runtime.heap", "runtime.errors", "runtime.config", "runtime.learning", "runtime.log_format",
      "runtime.sliders", "runtime.characters"}


def layer(module: str) -> tuple[int, str]:
    """(layer, room) of one of our modules."""
    if module in L0:
        return 0, "vocabulary"
    top = module.split(".")[0]
    if top in ("persona_model", "memory", "plugins"):
        return 1, top
    if module in L3 or module == "runtime.cli" or module.startswith("runtime.cli_"):
        return 3, "app"
    return 2, "runtime"


def our_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(p for p in rel.parts if p != "__init__")
            mods[name] = path
    return mods


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level] if not path.name == "__init__.py" else module.split(".")
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return found


def resolve(name: str, mods: dict[str, Path]) -> str | None:
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in mods:
            return candidate
        parts.pop()
    return None


def allowed(src: str, dst: str) -> bool:
    (ls, rs), (ld, rd) = layer(src), layer(dst)
    if src == dst or dst in PACKAGES:  # a package's empty __init__ is no edge
        return True
    if ls == 0:
        return ld == 0
    if ls == 1:
        return ld == 0 or rd == rs
    if ls == 2:
        return ld in (0, 2)
    return True


def test_layers_are_respected() -> None:
    mods = our_modules()
    bad = []
    for module, path in mods.items():
        for lineno, name in imports(path, module):
            target = resolve(name, mods)
            if target is None or target == module:
                continue
            if not allowed(module, target):
                bad.append(f"{path.relative_to(ROOT)}:{lineno} {module} (L{layer(module)[0]}) imports "
                           f"{target} (L{layer(target)[0]})")
    assert not bad, "imports that break ARCHITECTURE.md's layers:\n" + "\n".join(bad)


def test_vocabulary_is_standard_library_only() -> None:
    mods = our_modules()
    for module in L0:
        for lineno, name in imports(mods[module], module):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top == "runtime" or top == "__future__", (
                f"{module}:{lineno} imports {name}, which is not the standard library"
            )


def test_no_type_checking_dodges() -> None:
    for module, path in our_modules().items():
        assert "TYPE_CHECKING" not in path.read_text(), f"{module} uses TYPE_CHECKING to hide an import"


def test_the_checker_catches_a_bad_edge(tmp_path: Path) -> None:
    """The rule itself: a plugin importing memory, or the turn importing a plugin, is refused."""
    assert not allowed("plugins.avatar_ws", "memory.store")
    assert not allowed("runtime.turn", "plugins.avatar_ws")
    assert not allowed("runtime.events", "runtime.turn")
    assert allowed("runtime.app", "plugins.avatar_ws")
    assert allowed("plugins.speakers_sounddevice", "plugins.speakers_silent")
