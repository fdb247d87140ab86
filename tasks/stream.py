"""The teacher cache, streamed into distillation: each training worker reads the cache one
Parquet row group at a time, in a seeded order, and holds at most `distill.memory_budget_mb` of
cached rows, so its memory does not grow with the cache (Electricity- and Traffic-sized series
have caches of tens of GB). A split that fits in the budget is read once and kept.

An epoch, the same on every rank (a pure function of the seed and the epoch, so a resumed run
sees what the killed one would have):
1. the row groups of the split (of the first teacher's cache) are permuted; rank r takes groups
   r, r + world, ...
2. a rank reads its groups in that order into a buffer of at most `buffer_rows` rows; when the
   buffer is full its rows are permuted and cut into batches, and the few rows short of a batch
   wait for the next fill;
3. every rank runs as many steps as the rank with the fewest rows (DDP needs the same number).
Several teachers: the other caches' rows are joined to the first's by window_id, from the row
groups whose window_id range overlaps (their statistics say which), never by position.

Ray Data builds the cache (tasks/cache.py) but does not read it here: its streaming split hands
blocks to whichever worker asks first, so two workers with the same seed would not train the
same student twice, and a Ray Data read inside the training workers competes with them for CPUs
(on a small machine it can wait forever, docs/pitfalls.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from timedistill.store.records import Cache
from timedistill.store.storage import Storage
from timedistill.tasks.cache import TeacherOutputs, unpack
from timedistill.tasks.errors import StepError

MIB = 2**20


class RowGroup(NamedTuple):
    """One Parquet row group of a cached split: the unit the stream reads."""

    path: str  # relative to the storage root
    number: int  # its index within its file (a field named `index` would hide tuple.index)
    rows: int
    first: int  # smallest window_id
    last: int  # largest window_id


@dataclass(frozen=True)
class CacheLayout:
    """One teacher's cached split, row group by row group (from the files' footers)."""

    cache: Cache
    row_groups: tuple[RowGroup, ...]

    @classmethod
    def read(cls, storage: Storage, cache: Cache, split: str) -> CacheLayout:
        """Read the footers of a split, checking that every file holds rows of the shapes the
        cache record (and so the student) expects."""
        shapes = {"prediction_shape": [cache.horizon, cache.n_vars], "feature_shape": [cache.n_vars, cache.feature_dim]}
        directory, groups = cache.split_dir(split), []
        for name in storage.listdir(directory):
            if not name.endswith(".parquet"):
                continue
            path = f"{directory}/{name}"
            metadata = pq.read_metadata(storage.path(path), filesystem=storage.fs)
            stored = {key.decode(): value.decode() for key, value in (metadata.metadata or {}).items()}
            for key, expected in shapes.items():
                if stored.get(key) != str(expected):
                    raise StepError(f"teacher cache {storage.uri(path)}: {key.removesuffix('_shape')} rows of shape "
                                    f"{stored.get(key)}, but the run needs {expected} (a cache of another window "
                                    f"or teacher): delete {storage.uri(cache.directory)} and run again")
            column = metadata.schema.to_arrow_schema().get_field_index("window_id")
            for index in range(metadata.num_row_groups):
                group = metadata.row_group(index)
                stats = group.column(column).statistics
                groups.append(RowGroup(path, index, group.num_rows, int(stats.min), int(stats.max)))
        if sum(group.rows for group in groups) != cache.rows[split]:
            raise StepError(f"teacher cache {storage.uri(directory)} holds {sum(g.rows for g in groups)} "
                            f"{split} windows, its record says {cache.rows[split]}: delete it and run again")
        return cls(cache=cache, row_groups=tuple(groups))

    @property
    def row_bytes(self) -> int:
        """Bytes of one cached row in memory: window_id, prediction and feature (float16)."""
        return 8 + 2 * self.cache.n_vars * (self.cache.horizon + self.cache.feature_dim)

    def read_rows(self, storage: Storage, groups: list[RowGroup]) -> TeacherOutputs:
        tables = [pq.ParquetFile(storage.path(group.path), filesystem=storage.fs).read_row_group(group.number)
                  for group in groups]
        return unpack(pa.concat_tables(tables), self.cache.horizon, self.cache.n_vars, self.cache.feature_dim)

    def overlapping(self, first: int, last: int) -> list[RowGroup]:
        return [group for group in self.row_groups if group.last >= first and group.first <= last]


@dataclass(frozen=True)
class CachedRows:
    """Rows of every teacher's cache for the same windows, in the same order."""

    window_id: np.ndarray  # [N]
    teachers: tuple[TeacherOutputs, ...]  # one per teacher, each [N, ...]

    @property
    def rows(self) -> int:
        return len(self.window_id)


def gather(pieces: list[CachedRows], offsets: np.ndarray, positions: np.ndarray) -> CachedRows:
    """Rows at `positions` of the pieces laid end to end (offsets: where each piece starts), as
    one new piece: the buffer itself is never concatenated, so it is never held twice."""
    piece_of = np.searchsorted(offsets, positions, side="right") - 1
    sources = [(k, piece_of == k) for k in np.unique(piece_of)]  # each piece, and where its rows go

    def take(select: Callable[[CachedRows], np.ndarray]) -> np.ndarray:  # one array of the pieces, at positions
        first = select(pieces[0])
        out = np.empty((len(positions), *first.shape[1:]), first.dtype)
        for k, mask in sources:
            out[mask] = select(pieces[k])[positions[mask] - offsets[k]]
        return out

    window_id = take(lambda piece: piece.window_id)

    def teacher(j: int) -> TeacherOutputs:  # the j-th teacher's outputs of the pieces, at positions
        return TeacherOutputs(window_id, take(lambda piece: piece.teachers[j].prediction),
                              take(lambda piece: piece.teachers[j].feature))

    return CachedRows(window_id, tuple(teacher(j) for j in range(len(pieces[0].teachers))))


@dataclass
class CacheStream:
    """Seeded epochs of cached rows for a rank, within a memory budget. Planned by the driver
    (`plan`, which reads the footers and checks the budget before any worker starts) and shipped
    to the workers, which call `epoch`."""

    storage: Storage
    layouts: tuple[CacheLayout, ...]  # one per teacher; the first's row groups are the units
    buffer_rows: int  # rows held at most, besides the row group being added
    batch_size: int
    seed: int
    resident: bool  # the whole split fits: read once, kept for every epoch
    _kept: dict[int, CachedRows] = field(default_factory=dict, repr=False)

    @classmethod
    def plan(cls, storage: Storage, caches: list[Cache], split: str, *, budget_mb: float, batch_size: int,
             seed: int) -> CacheStream:
        layouts = tuple(CacheLayout.read(storage, cache, split) for cache in caches)
        if len({cache.rows[split] for cache in caches}) > 1:
            raise StepError(f"the teachers' caches hold different numbers of {split} windows "
                            f"({', '.join(str(cache.rows[split]) for cache in caches)}): they were built on "
                            "different data")
        row_bytes = sum(layout.row_bytes for layout in layouts)
        largest_group = max(group.rows for group in layouts[0].row_groups)
        buffer_rows = int(budget_mb * MIB) // row_bytes - largest_group
        if buffer_rows < batch_size:
            needed = (batch_size + largest_group) * row_bytes / MIB
            raise StepError(f"distill.memory_budget_mb={budget_mb:g} holds fewer cached windows than one batch "
                            f"(distill.batch_size={batch_size}) and a row group of the cache: give it at least "
                            f"{np.ceil(needed):.0f}")
        return cls(storage=storage, layouts=layouts, buffer_rows=buffer_rows, batch_size=batch_size, seed=seed,
                   resident=buffer_rows >= caches[0].rows[split])

    @property
    def units(self) -> tuple[RowGroup, ...]:
        return self.layouts[0].row_groups

    def assignment(self, epoch: int, world: int) -> list[np.ndarray]:
        """Every rank's units of an epoch, in the order it reads them."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        return [order[rank::world] for rank in range(world)]

    def steps(self, epoch: int, world: int) -> int:
        rows = [sum(self.units[unit].rows for unit in mine) for mine in self.assignment(epoch, world)]
        return min(rows) // self.batch_size

    def epoch(self, epoch: int, rank: int, world: int) -> Iterator[CachedRows]:
        """This rank's batches of one epoch (steps(epoch, world) of them)."""
        mine = self.assignment(epoch, world)[rank]
        return self._batches(mine, np.random.default_rng([self.seed, epoch, rank]), self.steps(epoch, world))

    def _batches(self, units: np.ndarray, rng: np.random.Generator, steps: int) -> Iterator[CachedRows]:
        pieces: list[CachedRows] = []
        emitted = held = 0
        for position, unit in enumerate(units):
            pieces.append(self._read(int(unit)))
            held += pieces[-1].rows
            if held < self.buffer_rows and position < len(units) - 1:
                continue
            offsets = np.cumsum([0] + [piece.rows for piece in pieces[:-1]])
            order = rng.permutation(held)
            full = held // self.batch_size
            for begin in range(0, full * self.batch_size, self.batch_size):
                if emitted == steps:
                    return
                yield gather(pieces, offsets, order[begin : begin + self.batch_size])
                emitted += 1
            rest = order[full * self.batch_size :]  # fewer than a batch: they wait for the next fill
            pieces, held = ([gather(pieces, offsets, rest)] if len(rest) else []), len(rest)

    def _read(self, unit: int) -> CachedRows:
        """One unit's rows from every teacher's cache, joined by window_id."""
        if unit in self._kept:
            return self._kept[unit]
        group = self.units[unit]
        first = self.layouts[0].read_rows(self.storage, [group])
        teachers = [first]
        for layout in self.layouts[1:]:
            other = layout.read_rows(self.storage, layout.overlapping(group.first, group.last))
            found = np.searchsorted(other.window_id, first.window_id).clip(max=max(len(other.window_id) - 1, 0))
            if len(other.window_id) == 0 or not np.array_equal(other.window_id[found], first.window_id):
                raise RuntimeError("the teachers' caches do not hold the same training windows")
            teachers.append(TeacherOutputs(first.window_id, other.prediction[found], other.feature[found]))
        rows = CachedRows(first.window_id, tuple(teachers))
        if self.resident:
            self._kept[unit] = rows
        return rows
