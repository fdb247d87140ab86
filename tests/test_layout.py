"""The floors of the code base (installed as timedistill.flows, timedistill.tasks, ...) and the
direction of their imports (docs/architecture.md, "Floors"):

    timedistill -> flows -> tasks -> store -> models      serving -> store -> models      conf below all

checked on the source, so that a new import against the grain fails here before it ties the
server to the training stack."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

FACE = {"api", "client"}  # timedistill/: what users import, on top of everything
FLOORS = ("flows", "tasks", "serving", "store", "models", "conf", *FACE)
# what each floor must not import (models/ has its own, stricter check in test_models.py)
FORBIDDEN = {
    "flows": FACE,
    "store": {"flows", "tasks", "serving", *FACE},
    "serving": {"flows", "tasks", *FACE},
    "tasks": {"flows", "serving", *FACE},
    "conf": {"flows", "tasks", "serving", "store", "models", *FACE},
}


def imported_floors(path) -> set[str]:
    """The project floors a file imports, at any depth of the file (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("timedistill.")} & set(FLOORS)
    return found


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_imports_point_one_way(floor):
    wrong = {str(path.relative_to(ROOT)): sorted(imported_floors(path) & FORBIDDEN[floor])
             for path in sorted((ROOT / floor).rglob("*.py"))}
    assert not {path: floors for path, floors in wrong.items() if floors}


def test_the_check_sees_lazy_imports(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("def f():\n    from timedistill.tasks.steps import Pipeline\n    import timedistill.flows.cli\n"
                      "    from timedistill import models\n")
    assert imported_floors(source) == {"tasks", "flows", "models"}
