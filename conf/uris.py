"""Where a series comes from, as a string: a database URI and the password it may hold (shown,
logged and stored as '***'), a table name, and the dataset name a path or a table gives."""

from __future__ import annotations

import re

REDACTED = "***"  # a secret, where a config is written down
DATABASE_SCHEMES = ("postgresql://", "postgres://")  # data.path of a database (tasks/sources.py)
# a table name as data.query may give it: schema.table, either part plain or "quoted"
TABLE_NAME = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+")(?:\.(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+"))?$')
PASSWORD_PARAMETER = re.compile(r"(?i)([?&]password=)[^&#]*")  # libpq also takes ?password=...


def is_database(path: str) -> bool:
    return path.lower().startswith(DATABASE_SCHEMES)


def _password_span(uri: str) -> tuple[int, int] | None:
    """Where the password of `scheme://user:password@host/...` is, if there is one."""
    if "://" not in uri:
        return None
    start = uri.index("://") + 3
    end = len(uri)
    for stop in "/?#":  # the authority ends at the first of these
        found = uri.find(stop, start)
        end = found if found != -1 and found < end else end
    at = uri.rfind("@", start, end)
    colon = uri.find(":", start, at) if at != -1 else -1
    return (colon + 1, at) if colon != -1 else None


def has_password(uri: str) -> bool:
    """A password in a URI: `user:password@` or libpq's `?password=`."""
    return _password_span(uri) is not None or PASSWORD_PARAMETER.search(uri) is not None


def password_of(uri: str) -> str | None:
    """The password a URI holds, to scrub it from a library's message."""
    span = _password_span(uri)
    if span is not None:
        return uri[span[0]: span[1]] or None
    found = PASSWORD_PARAMETER.search(uri)
    return uri[found.end(1): found.end()] or None if found else None


def redact(uri: str) -> str:
    """The URI as it may be shown, logged or stored: its password, if any, as '***'."""
    span = _password_span(uri)
    if span is not None:
        uri = uri[: span[0]] + REDACTED + uri[span[1]:]
    return PASSWORD_PARAMETER.sub(lambda match: match[1] + REDACTED, uri)


def dataset_name(path: str) -> str:
    """A plain dataset name from a file's name: `data/My Load.csv.gz` -> `my-load`."""
    stem = path.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")[:64]
    return name or "data"
