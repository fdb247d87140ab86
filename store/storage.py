"""Every artifact goes through here: one root (a local folder or an object-store URI) reached
through pyarrow's filesystems, so the same code runs on a laptop and on a cluster.

The completion protocol is the same everywhere: each file is written atomically (temp file then
rename on a local disk; a single PUT on an object store), a directory output counts only once
its marker file exists, and the marker is always written last.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SUCCESS = "_SUCCESS"


class FileStat(NamedTuple):
    """A file as a listing describes it: enough to notice that it was rewritten."""

    name: str
    size: int
    mtime_ns: int  # on an object store, its LastModified (one-second resolution)


class TreeEntry(NamedTuple):
    """A file or folder as a recursive listing describes it (`Storage.stat_tree`)."""

    path: str  # under the listed folder, "/"-separated: "v1/student.pt"
    is_dir: bool
    size: int
    mtime_ns: int


def make_filesystem(uri: str, endpoint_override: str | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or a URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    if uri.startswith("s3://") and endpoint_override:
        bucket_path = uri.removeprefix("s3://").rstrip("/")
        scheme = "http" if endpoint_override.startswith("http://") else "https"
        endpoint = endpoint_override.split("://", 1)[-1]
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint,
            scheme=scheme,
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            allow_bucket_creation=True,
        )
        return fs, bucket_path
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


class Storage:
    """Artifacts under one root. Paths given to the methods are relative to the root."""

    def __init__(self, root: str, endpoint_override: str | None = None) -> None:
        self.root = root
        self.endpoint_override = endpoint_override
        self.fs, self.base = make_filesystem(root, endpoint_override)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self) -> tuple[Any, ...]:  # Ray ships a Storage to workers by its root
        return (Storage, (self.root, self.endpoint_override))

    # ---- paths ---------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """The path inside the filesystem (what pyarrow and Ray Train's storage_path take)."""
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def uri(self, rel: str = "") -> str:
        """A human-readable location: an absolute local path or scheme://bucket/key."""
        if self.is_local:
            return self.path(rel)
        scheme = self.root.split("://", 1)[0]
        return f"{scheme}://{self.path(rel)}"

    def local_path(self, rel: str = "") -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri(rel)} is not on a local disk")
        return Path(self.path(rel))

    # ---- queries -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def is_dir(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory

    def listdir(self, rel: str) -> list[str]:
        info = self.fs.get_file_info(self.path(rel))
        if info.type != pafs.FileType.Directory:
            return []
        selector = pafs.FileSelector(self.path(rel), recursive=False)
        return sorted(entry.base_name for entry in self.fs.get_file_info(selector))

    def stat_files(self, rel: str) -> list[FileStat]:
        """The files directly under a directory (none when it does not exist), by name: one
        listing, on a local disk and on an object store alike."""
        selector = pafs.FileSelector(self.path(rel), recursive=False, allow_not_found=True)
        return sorted(FileStat(e.base_name, e.size or 0, e.mtime_ns or 0) for e in self.fs.get_file_info(selector)
                      if e.type == pafs.FileType.File)

    def stat_tree(self, rel: str) -> list[TreeEntry]:
        """Every file and folder under a directory, at any depth (none when it does not exist or
        is a file), by path: one listing (on an object store, one paged listing of the prefix)."""
        base = self.path(rel)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        try:
            found = self.fs.get_file_info(selector)
        except NotADirectoryError:
            return []
        return sorted(TreeEntry(e.path.removeprefix(f"{base}/"), e.type == pafs.FileType.Directory, e.size or 0,
                                e.mtime_ns or 0) for e in found if e.type != pafs.FileType.NotFound)

    def size(self, rel: str) -> int:
        """Bytes of a file, or of every file under a directory."""
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.File:
            return info.size or 0
        selector = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        return sum(e.size or 0 for e in self.fs.get_file_info(selector) if e.type == pafs.FileType.File)

    # ---- reads ---------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs, columns=columns)

    # ---- writes (each one atomic) --------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return
        with self.fs.open_output_stream(target) as stream:  # one PUT: atomic on object stores
            stream.write(data)

    def write_json(self, rel: str, payload: Any) -> None:
        self.write_bytes(rel, (json.dumps(payload, indent=2, sort_keys=False) + "\n").encode())

    def write_parquet(self, rel: str, table: pa.Table, compression: str = "zstd",
                      row_group_size: int | None = None) -> int:
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression=compression, row_group_size=row_group_size)
        data = buffer.getvalue()
        self.write_bytes(rel, data)
        return len(data)

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    @contextmanager
    def publish_dir(self, rel: str, *, replace: bool = True) -> Iterator[str]:
        """Yield a directory (relative path) to write an output into; it appears at `rel` only if
        the block finishes. On a local disk the directory is staged and renamed into place; on an
        object store it is written in place and the caller's marker, written last, makes it count.
        Either way a failure removes what the block wrote.

        `replace`: an existing directory at `rel` (an older, incomplete attempt at the same
        output) is removed first. Without it, an existing directory is left alone and the block is
        not run (FileExistsError): for outputs that another writer may own (a registry version)."""
        if not replace and self.exists(rel):
            raise FileExistsError(f"{self.uri(rel)} exists already")
        if self.is_local:
            staging = f"{rel}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                yield staging
                final = self.local_path(rel)
                if final.exists():
                    if not replace:
                        raise FileExistsError(f"{self.uri(rel)} appeared while it was being written")
                    shutil.rmtree(final)
                os.replace(self.local_path(staging), final)
            finally:
                if self.exists(staging):
                    shutil.rmtree(self.local_path(staging), ignore_errors=True)
            return
        if replace:
            self.delete(rel)
        try:
            yield rel
        except BaseException:
            self.delete(rel)
            raise

    def complete(self, rel: str, marker: str = SUCCESS) -> bool:
        return self.exists(f"{rel}/{marker}")
