"""The teacher cache streamed into distillation (tasks/stream.py): seeded epochs, every window at
most once per epoch, the same steps on every rank, several teachers joined by window_id, and a
worker's memory bounded by distill.memory_budget_mb however large the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from timedistill.store.records import Cache
from timedistill.store.storage import Storage
from timedistill.tasks.cache import cache_table
from timedistill.tasks.errors import StepError
from timedistill.tasks.stream import MIB, CacheStream
from timedistill.tasks.windows import window_starts

HORIZON, N_VARS = 4, 3
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "ETTh1.csv"


def write_cache(storage: Storage, name: str, rows: int, feature_dim: int, files: int, group_rows: int) -> Cache:
    """A cache of `rows` train windows in `files` part files of row groups of `group_rows`; every
    value encodes its window_id, so a joined row can be checked against its window."""
    directory = f"cache/{name}"
    ids = np.arange(rows)
    for part in np.array_split(ids, files):
        prediction = np.broadcast_to(part[:, None, None], (len(part), HORIZON, N_VARS)).astype(np.float16)
        feature = np.broadcast_to(-part[:, None, None], (len(part), N_VARS, feature_dim)).astype(np.float16)
        storage.write_parquet(f"{directory}/train/part-{part[0]:08d}.parquet", cache_table(part, prediction, feature),
                              compression="none", row_group_size=group_rows)
    return Cache(key=name, teacher=f"teachers/{name}", teacher_sha256="0", data_fingerprint="f", lookback=8,
                 horizon=HORIZON, n_vars=N_VARS, feature_dim=feature_dim, teacher_feature_dim=feature_dim,
                 dtype="float16", rows={"train": rows}, bytes=storage.size(directory), teacher_forward_batches=0,
                 seconds=0.0, directory=directory)


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path))


def epoch_ids(stream: CacheStream, epoch: int, world: int) -> list[list[np.ndarray]]:
    return [[batch.window_id for batch in stream.epoch(epoch, rank, world)] for rank in range(world)]


def test_a_streamed_epoch_is_seeded_and_sees_every_window_at_most_once(storage):
    cache = write_cache(storage, "a", rows=1000, feature_dim=5, files=3, group_rows=37)
    budget = 120 * 62 / MIB  # 120 rows of 62 bytes: much less than the split
    stream = CacheStream.plan(storage, [cache], "train", budget_mb=budget, batch_size=16, seed=7)
    assert not stream.resident and stream.buffer_rows < 1000
    for world in (1, 2):
        first = epoch_ids(stream, 0, world)
        again = epoch_ids(CacheStream.plan(storage, [cache], "train", budget_mb=budget, batch_size=16, seed=7),
                          0, world)
        assert all(np.array_equal(a, b) for ra, rb in zip(first, again, strict=True)
                   for a, b in zip(ra, rb, strict=True))  # same seed, same batches
        assert {len(rank) for rank in first} == {stream.steps(0, world)}  # every rank, the same steps
        seen = np.concatenate([np.concatenate(rank) for rank in first])
        assert len(np.unique(seen)) == len(seen) > 1000 - world * (16 + 37)  # at most once, nearly all
        assert all(len(batch) == 16 for rank in first for batch in rank)
    shuffled = np.concatenate(epoch_ids(stream, 0, 1)[0])
    assert not np.array_equal(shuffled, np.sort(shuffled))
    assert not np.array_equal(shuffled, np.concatenate(epoch_ids(stream, 1, 1)[0]))  # a new order every epoch


def test_a_split_that_fits_the_budget_is_read_once_and_shuffled_whole(storage):
    cache = write_cache(storage, "a", rows=300, feature_dim=5, files=2, group_rows=50)
    stream = CacheStream.plan(storage, [cache], "train", budget_mb=1, batch_size=10, seed=1)
    assert stream.resident
    ids = np.concatenate(epoch_ids(stream, 0, 1)[0])
    assert sorted(ids.tolist()) == list(range(300))
    # windows of one row group land in many batches: the whole split was shuffled as one
    assert len({int(np.flatnonzero(ids == i)[0]) // 10 for i in range(50)}) > 20
    storage.delete(cache.directory)  # kept in memory after the first epoch: the files are not read again
    assert sorted(np.concatenate(epoch_ids(stream, 1, 1)[0]).tolist()) == list(range(300))


def test_several_teachers_are_joined_by_window_id_across_different_row_groups(storage):
    wide = write_cache(storage, "wide", rows=500, feature_dim=9, files=4, group_rows=23)
    narrow = write_cache(storage, "narrow", rows=500, feature_dim=2, files=1, group_rows=61)
    stream = CacheStream.plan(storage, [wide, narrow], "train", budget_mb=0.05, batch_size=8, seed=3)
    assert not stream.resident
    for batch in stream.epoch(0, 0, 1):
        for teacher in batch.teachers:  # every value encodes the window it belongs to
            assert np.array_equal(teacher.prediction[:, 0, 0], batch.window_id.astype(np.float16))
            assert np.array_equal(teacher.feature[:, -1, -1], -batch.window_id.astype(np.float16))
        assert batch.teachers[1].feature.shape == (8, N_VARS, 2)


def test_a_budget_below_one_batch_or_a_cache_of_other_shapes_is_one_line_before_any_worker(storage):
    cache = write_cache(storage, "a", rows=200, feature_dim=5, files=1, group_rows=20)
    with pytest.raises(StepError, match=r"distill.memory_budget_mb=0.001 .*distill.batch_size=32.* at least 1$"):
        CacheStream.plan(storage, [cache], "train", budget_mb=0.001, batch_size=32, seed=0)
    other = cache.model_copy(update={"feature_dim": 6})
    with pytest.raises(StepError, match=r"feature rows of shape \[3, 5\], but the run needs \[3, 6\]"):
        CacheStream.plan(storage, [other], "train", budget_mb=1, batch_size=8, seed=0)


# what a distillation worker may add besides the budget and the models: torch's working memory
# for a batch and its backward pass, the checkpoints, and the pages pyarrow's reads and the
# allocator keep (measured: about 200 MiB at 8,192-wide features, whatever the cache's size)
ALLOWANCE_MB = 256
WIDTH = 8192


def write_wide_cache(storage: Storage, like: Cache, rows: int, name: str) -> Cache:
    """A train split of `rows` windows with WIDTH-wide teacher features (random: what is measured
    is the read, not the teacher), in part files of 64 windows like the cache step's."""
    directory, rng = f"cache/{name}", np.random.default_rng(0)
    for first in range(0, rows, 64):
        ids = np.arange(first, min(first + 64, rows))
        table = cache_table(ids, rng.random((len(ids), like.horizon, like.n_vars), np.float32).astype(np.float16),
                            rng.random((len(ids), like.n_vars, WIDTH), np.float32).astype(np.float16))
        storage.write_parquet(f"{directory}/train/part-{first:08d}.parquet", table, compression="none",
                              row_group_size=16)
    return like.model_copy(update={"feature_dim": WIDTH, "teacher_feature_dim": WIDTH, "rows": {"train": rows},
                                   "bytes": storage.size(directory), "directory": directory})


def test_a_worker_distilling_from_a_cache_many_times_its_budget_stays_within_it(smoke_pipeline):
    """The smoke run's student distilled from a wide cache of its 441 train windows, and from one
    of 2,121 windows (the first 3,200 rows of ETTh1 instead of 800), each many times larger
    than a budget of 8 MiB: every worker grows by less than budget + models + ALLOWANCE_MB, and
    the larger cache, ~190 MiB more, adds less than a tenth of that (holding it would add all)."""
    from timedistill.tasks.steps import RunContext, ingest_step
    from timedistill.tasks.students import train_students

    smoke = smoke_pipeline
    distill = smoke.config.distill.model_copy(update={"memory_budget_mb": 8, "baseline": False, "batch_size": 16})
    runs = []
    for max_rows in (800, 3200):
        data = smoke.config.data.model_copy(update={"path": str(SHIPPED), "max_rows": max_rows})
        config = smoke.config.model_copy(update={"distill": distill, "data": data})
        with RunContext(config) as pipe:
            dataset = ingest_step(pipe)
            rows = len(window_starts(dataset.splits["train"], config.data.lookback, 24))
            cache = write_wide_cache(pipe.storage, smoke.cache, rows, f"wide-{max_rows}")
            assert cache.bytes / MIB > 5 * distill.memory_budget_mb
            students = train_students(config, pipe.storage, dataset, [smoke.teacher], [cache],
                                      f"runs/smoke/budget-{max_rows}", series=pipe.series(dataset), weights=[1.0])
        model_mb = (students.student.params + WIDTH * 64) * 4 * 4 / MIB  # with the projection: weights, grads, Adam
        growth = max(peak - start for peak, start in zip(students.peak_memory_mb, students.start_memory_mb,
                                                        strict=True))
        assert growth < distill.memory_budget_mb + model_mb + ALLOWANCE_MB
        assert np.isfinite(students.student.test_mse)
        runs.append((cache.bytes / MIB, growth))
    (small_mb, small_growth), (large_mb, large_growth) = runs
    assert large_mb - small_mb > 150
    assert large_growth - small_growth < 0.1 * (large_mb - small_mb)
