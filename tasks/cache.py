"""The teacher cache: the frozen teacher runs once over every window of every split, as a Ray
Data batch-inference job, and its predictions and features land in Parquet keyed by window_id.
Distillation then streams them (tasks/stream.py) instead of running the teacher on every batch
of every epoch.

Layout: cache/<key>/<split>/part-<first window_id>.parquet, <split>/_SUCCESS (its row count),
cache.json and _SUCCESS last. The key hashes the teacher's weights, the data fingerprint, the
window and the stored feature width, so a cache is reused exactly when it is valid.

Size is bounded twice: values are stored as float16, and teacher features wider than
`distill.feature_max_dim` (ModernTCN's and PatchTST's flattened patches) are reduced to that
width by adaptive average pooling along the feature axis (`models.reduce_feature_width`), the
same deterministic reduction the online path applies, so both paths see the same features.
Row groups hold about ROW_GROUP_BYTES each: the unit distillation reads and shuffles, small
enough that a worker's memory budget holds many of them.
"""

from __future__ import annotations

import time
import warnings
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from timedistill.conf import FORMAT, Config, stable_hash
from timedistill.models import reduce_feature_width
from timedistill.store.record import read_record, write_record
from timedistill.store.records import Cache, Dataset, Teacher
from timedistill.store.series import standardized_series
from timedistill.store.storage import SUCCESS, Storage
from timedistill.store.weights import load_teacher
from timedistill.tasks.runtime import Workers
from timedistill.tasks.windows import SPLITS, WindowBatcher, inference_batch, window_index

CACHE_META = "cache.json"
ROW_GROUP_BYTES = 4 * 2**20

# Ray 2.60 has no named parameter for map_batches' max_restarts yet, and says so on every call.
# A filter for the whole process, not catch_warnings: caches of several horizons build at once.
warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")


def stored_feature_dim(teacher: Teacher, config: Config) -> int:
    return min(teacher.feature_dim, config.distill.feature_max_dim)


def cache_key(config: Config, dataset: Dataset, teacher: Teacher) -> str:
    return stable_hash({
        "teacher_sha256": teacher.sha256,
        "data": dataset.fingerprint,
        "lookback": teacher.lookback,
        "horizon": teacher.horizon,
        "feature_dim": stored_feature_dim(teacher, config),
        "dtype": "float16",
        "format": FORMAT,
    })[:16]


def find_cache(config: Config, storage: Storage, dataset: Dataset, teacher: Teacher) -> Cache | None:
    directory = f"cache/{cache_key(config, dataset, teacher)}"
    if not storage.complete(directory):
        return None
    return read_record(storage, f"{directory}/{CACHE_META}", Cache, directory=directory, cached=True)


def build_cache(config: Config, storage: Storage, dataset: Dataset, teacher: Teacher) -> Cache:
    """Run the teacher once over every window and store what it says (find_cache first: this
    always builds)."""
    key = cache_key(config, dataset, teacher)
    directory = f"cache/{key}"
    index = window_index(dataset.splits, teacher.lookback, teacher.horizon)
    began = time.perf_counter()
    workers = Workers.of(config)
    storage.delete(directory)  # an earlier attempt that did not finish
    # Ray: batch inference with a pool of actors, each holding the frozen teacher once
    with warnings.catch_warnings():  # Ray 2.60 deprecates max_restarts as a remote argument and has no
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")  # named parameter for it yet
        inference = ray.data.from_arrow(index).map_batches(
            TeacherPredictor,
            fn_constructor_kwargs={  # small records only: each actor reads the series itself
                "storage": storage, "dataset": dataset, "teacher": teacher, "directory": directory,
                "feature_dim": stored_feature_dim(teacher, config), "use_gpu": workers.gpus > 0,
                "threads": workers.threads,
            },
            batch_size=4 * inference_batch(teacher.lookback, teacher.n_vars),  # windows per part file
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers.count),
            num_cpus=workers.cpus,
            num_gpus=workers.gpus,
            # a lost actor fails the step, which is retried whole (the cache is rebuilt from
            # scratch): Ray Data's own actor restarts keep their arguments in the object store,
            # which Ray reports on the terminal as an error line (ray issue 53727)
            max_restarts=0,
        )
    stats = inference.to_arrow_refs()
    table = pa.concat_tables(ray.get(stats))
    rows = {split: 0 for split in SPLITS}
    for split, count in zip(table["split"].to_pylist(), table["rows"].to_pylist(), strict=True):
        rows[split] += count
    expected = {split: int(np.sum(index["split"].to_numpy(zero_copy_only=False) == split)) for split in SPLITS}
    if rows != expected:
        storage.delete(directory)
        raise RuntimeError(f"teacher cache {directory}: wrote {rows} windows, expected {expected}")
    for split in SPLITS:
        storage.write_json(f"{directory}/{split}/{SUCCESS}", {"rows": rows[split]})
    cache = Cache(
        key=key, teacher_dir=teacher.directory, teacher_sha256=teacher.sha256, data_fingerprint=dataset.fingerprint,
        lookback=teacher.lookback, horizon=teacher.horizon, n_vars=teacher.n_vars,
        feature_dim=stored_feature_dim(teacher, config), teacher_feature_dim=teacher.feature_dim, dtype="float16",
        rows=rows, bytes=storage.size(directory), teacher_forward_batches=int(sum(table["batches"].to_pylist())),
        seconds=time.perf_counter() - began, directory=directory)
    write_record(storage, f"{directory}/{CACHE_META}", cache)
    storage.write_bytes(f"{directory}/{SUCCESS}", b"")
    return cache


class TeacherPredictor:
    """A Ray Data actor: runs the frozen teacher over batches of windows and writes each batch's
    predictions and features as a Parquet part file; returns one stats row per file."""

    def __init__(self, storage: Storage, dataset: Dataset, teacher: Teacher, directory: str, feature_dim: int,
                 use_gpu: bool, threads: int) -> None:
        # the series is read here, not passed in: an actor whose constructor arguments sit in the
        # object store cannot be restarted once they are gone, and Ray says so on the terminal
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.storage, self.directory, self.feature_dim = storage, directory, feature_dim
        self.model = load_teacher(storage, teacher, self.device)
        self.batcher = WindowBatcher(standardized_series(storage, dataset), teacher.lookback, teacher.horizon)

    @torch.inference_mode()
    def __call__(self, batch: pa.Table) -> pa.Table:
        stats = []
        splits = batch["split"].to_numpy(zero_copy_only=False)
        for split in dict.fromkeys(splits):  # in order of appearance
            part = batch.filter(pa.array(splits == split))
            window_id = part["window_id"].to_numpy()
            starts = part["start"].to_numpy()
            predictions, features, batches = [], [], 0
            step = self.batcher.inference_batch
            for begin in range(0, len(starts), step):
                x, _ = self.batcher(starts[begin : begin + step])
                prediction, feature = self.model(x.to(self.device))
                feature = reduce_feature_width(feature, self.feature_dim)
                predictions.append(prediction.to("cpu", torch.float16).numpy())
                features.append(feature.to("cpu", torch.float16).numpy())
                batches += 1
            table = cache_table(window_id, np.concatenate(predictions), np.concatenate(features))
            row_bytes = table.nbytes // max(table.num_rows, 1)
            written = self.storage.write_parquet(
                f"{self.directory}/{split}/part-{int(window_id[0]):08d}.parquet", table, compression="none",
                row_group_size=max(ROW_GROUP_BYTES // max(row_bytes, 1), 1))
            stats.append({"split": split, "rows": len(window_id), "bytes": written, "batches": batches})
        return pa.Table.from_pylist(stats)


def cache_table(window_id: np.ndarray, prediction: np.ndarray, feature: np.ndarray) -> pa.Table:
    """Rows of (window_id, prediction [S*C], feature [C*d]) as fixed-size float16 lists; the
    shapes are kept in the schema metadata."""
    columns = {"window_id": pa.array(window_id, pa.int64())}
    for name, values in (("prediction", prediction), ("feature", feature)):
        flat = pa.array(values.reshape(-1), pa.float16())
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))
    metadata = {"prediction_shape": str(list(prediction.shape[1:])), "feature_shape": str(list(feature.shape[1:]))}
    table = pa.table(columns)
    return table.replace_schema_metadata(metadata)


class TeacherOutputs(NamedTuple):
    """Cached rows as arrays, sorted by window_id."""

    window_id: np.ndarray  # [N]
    prediction: np.ndarray  # [N, S, C] float16
    feature: np.ndarray  # [N, C, d] float16


def unpack(table: pa.Table, horizon: int, n_vars: int, feature_dim: int) -> TeacherOutputs:
    """Arrow rows of the cache as arrays, sorted by window_id: several files or row groups read
    together arrive in whatever order they were read, and the caches of several teachers are
    joined by window_id (tasks/stream.py)."""
    if np.any(np.diff(table.column("window_id").to_numpy()) < 0):
        table = table.sort_by("window_id")

    def matrix(name: str, shape: tuple[int, ...]) -> np.ndarray:
        column = table.column(name).combine_chunks()
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), *shape)

    return TeacherOutputs(window_id=table.column("window_id").to_numpy(),
                          prediction=matrix("prediction", (horizon, n_vars)),
                          feature=matrix("feature", (n_vars, feature_dim)))


def read_cache_split(storage: Storage, cache: Cache, split: str) -> TeacherOutputs:
    """One whole split of the cache (for evaluation and tests)."""
    table = storage.read_parquet(cache.split_dir(split))
    return unpack(table, cache.horizon, cache.n_vars, cache.feature_dim)
