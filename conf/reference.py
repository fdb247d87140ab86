"""The configuration reference, docs/configuration.md, generated from the schema itself: every
section and field of conf/schema.py with its type, its default and the comment written beside it
(on its line, or on the lines just above it). A test compares the checked-in page with what this
writes, so the page cannot drift from the code.

    python -m timedistill.conf.reference > docs/configuration.md
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from timedistill.conf import schema

HEADER = """# Configuration

Generated from conf/schema.py by `python -m timedistill.conf.reference > docs/configuration.md`;
edit the comments there, not this page.

A config is a YAML file of these sections, or the name of one in conf/ (`smoke`, `etth1`,
`ettm1`, `weather`, `exchange`, `illness`). Every field has a default, so an empty file is a valid
config; an unknown key is an error that names it. `--set section.field=value` overrides a field
(the value is YAML: `--set data.horizons=[96]`); `--data FILE` points any config at a file of your
own ([own-data.md](own-data.md)).
"""

DERIVED = {("data", "name"): "the file's name"}  # defaults a validator derives from another field


def reference() -> str:
    """The whole page."""
    source = Path(schema.__file__).read_text()
    comments = _comments(source)
    classes = {node.name: node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)}
    parts = [HEADER]
    for section, field in schema.Config.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        node = classes[model.__name__]
        doc = ast.get_docstring(node)
        parts.append(f"## `{section}`\n")
        if doc:
            parts.append(" ".join(doc.split()) + "\n")
        parts.append("| field | type | default | meaning |\n|---|---|---|---|")
        for statement in node.body:
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            name = statement.target.id
            if name not in model.model_fields:
                continue
            kind = _type(ast.get_source_segment(source, statement.annotation) or "")
            default = DERIVED.get((section, name)) or _default(model.model_fields[name].get_default(
                call_default_factory=True))
            parts.append(f"| `{name}` | {kind} | {default} | {_describe(comments, statement)} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text, whether the line holds nothing else)."""
    found = {}
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row = token.start[0]
            found[row] = (token.string.lstrip("#").strip(), lines[row - 1].strip().startswith("#"))
    return found


def _describe(comments: dict[int, tuple[str, bool]], statement: ast.AnnAssign) -> str:
    """The comment lines just above a field and those on its own lines, as one sentence."""
    above: list[str] = []
    row = statement.lineno - 1
    while row in comments and comments[row][1]:
        above.insert(0, comments[row][0])
        row -= 1
    own = [comments[row][0] for row in range(statement.lineno, (statement.end_lineno or statement.lineno) + 1)
           if row in comments]
    text = " ".join([*above, *own])
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")  # a table cell, not HTML


def _type(annotation: str) -> str:
    """A field's annotation as a reader wants it: Literal choices listed, the rest as written."""
    if annotation.startswith("Literal["):
        return ", ".join(f"`{choice.strip().strip(chr(34))}`" for choice in annotation[len("Literal["):-1].split(","))
    return f"`{annotation}`".replace("|", "\\|")  # a table cell


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "-"
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


if __name__ == "__main__":
    print(reference(), end="")
