"""A teacher's predictions and features over every window, in Parquet (cache/<key>/cache.json)."""

from __future__ import annotations

from pydantic import Field

from timedistill.store.record import Record


class Cache(Record):
    """The teacher's predictions and features over every window, in Parquet (cache.json)."""

    key: str
    teacher_dir: str = Field(alias="teacher")  # the teacher's folder
    teacher_sha256: str
    data_fingerprint: str
    lookback: int
    horizon: int
    n_vars: int
    feature_dim: int  # stored width (the teacher's, or distill.feature_max_dim if narrower)
    teacher_feature_dim: int
    dtype: str
    rows: dict[str, int]  # split -> windows
    bytes: int
    teacher_forward_batches: int  # batches the teacher ran to build it
    seconds: float
    directory: str = Field(exclude=True)
    cached: bool = Field(False, exclude=True)  # a valid cache was found: the teacher did not run

    def split_dir(self, split: str) -> str:
        return f"{self.directory}/{split}"

    @property
    def forward_batches_run(self) -> int:
        """Teacher batches this use of the cache cost: none when it was reused."""
        return 0 if self.cached else self.teacher_forward_batches

    def describe(self) -> str:
        return f"h={self.horizon} {sum(self.rows.values()):,} windows, {self.bytes / 2**20:.1f} MiB"


class HorizonCaches(Record):
    """The caches of one horizon's source teachers (HorizonTeachers.sources, in their order)."""

    horizon: int
    caches: list[Cache]

    @property
    def cached(self) -> bool:
        """Every cache was found: no teacher ran."""
        return all(cache.cached for cache in self.caches)

    def describe(self) -> str:
        return "; ".join(cache.describe() for cache in self.caches)
