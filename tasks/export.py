"""Portable students (`timedistill export`): one self-contained file that takes histories in the
data's units and returns forecasts in them (the scaler folded in), and a JSON card beside it
that says what it is. The student runs anywhere ONNX Runtime or libtorch runs, without this
project.

    <dir>/<model>-<version>.onnx  (or .torchscript.pt)   input "history" [N, lookback, C] float32
    <dir>/<model>-<version>.onnx.json (.torchscript.json) its card: window, variables, step, metrics, source
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from timedistill.store.record import Record
from timedistill.store.records import RegistryEntry
from timedistill.store.registry import read_version
from timedistill.store.storage import Storage
from timedistill.store.weights import load_registered

Format = Literal["onnx", "torchscript"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
INPUT, OUTPUT = "history", "forecast"


class DataUnits(nn.Module):
    """The student with its scaler folded in: [N, L, C] in data units -> [N, S, C] in data units."""

    mean: torch.Tensor  # buffers: the scaler's per-variable mean and std [C]
    std: torch.Tensor

    def __init__(self, student: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.student = student
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))  # [C]
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))  # [C]

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        z = (history - self.mean) / self.std  # [N, L, C], standardized as in training
        return self.student(z).prediction * self.std + self.mean  # [N, S, C]


class ModelCard(Record):
    """What an exported file is: enough to feed it and to trust it."""

    model: str
    version: str
    format: str
    file: str
    input: str  # the input's name
    output: str
    lookback: int
    horizon: int
    variables: list[str]  # the last axis of input and output, in this order
    step: str
    timestamp: str | None
    units: str
    student: str
    teacher: str | None
    metrics: dict[str, dict[str, float | int | None]]  # test scores at registration (standardized)
    source: dict[str, str]  # the run, data and registry version it came from

    @property
    def card_file(self) -> str:
        """One card per exported file: both formats of a version can sit in one folder."""
        return f"{self.model}-{self.version}.{self.format}.json"

    def describe(self) -> str:
        return (f"{self.model} {self.version} as {self.format}: {self.file} ([N, {self.lookback}, "
                f"{len(self.variables)}] -> [N, {self.horizon}, {len(self.variables)}], data units)")


def export(storage: Storage, name: str, version: str | None, fmt: Format, output: Storage) -> ModelCard:
    """Write the file and its card under `output` (each atomically); returns the card."""
    entry = read_version(storage, name, version)
    module = DataUnits(load_registered(storage, entry), list(entry.scaler.mean), list(entry.scaler.std)).eval()
    example = torch.randn(2, entry.config.lookback, len(entry.config.variables))
    stem = f"{entry.model}-{entry.version}"
    file = stem + SUFFIX[fmt]
    output.write_bytes(file, onnx_bytes(module, example) if fmt == "onnx" else torchscript_bytes(module, example))
    card = model_card(entry, fmt, file, storage)
    output.write_json(card.card_file, card.to_json())
    return card


def onnx_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """ONNX through torch.export (the exporter that handles the students' depthwise filters),
    with a dynamic batch axis."""
    with quiet_exporter():
        program = torch.onnx.export(module, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes={"history": {0: torch.export.Dim("batch")}}, dynamo=True,
                                    verbose=False)
    if program is None:  # typed optional for the legacy exporter; dynamo=True returns a program
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    with tempfile.TemporaryDirectory() as folder:  # ONNXProgram saves to paths only
        path = Path(folder) / "model.onnx"
        program.save(path)
        return path.read_bytes()


def torchscript_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """TorchScript by tracing: what `torch.jit.load` (and libtorch) read."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch deprecates tracing and saving in favour of torch.export,
        warnings.simplefilter("ignore", DeprecationWarning)  # which makes no file libtorch can load
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(module, example), buffer)
    return buffer.getvalue()


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """The ONNX exporter logs a warning per torchvision operator it skips (we use none), and
    torch.export warns about its own deprecated internals: noise to a user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def model_card(entry: RegistryEntry, fmt: Format, file: str, storage: Storage) -> ModelCard:
    held = entry.config
    return ModelCard(
        model=entry.model, version=entry.version, format=fmt, file=file, input=INPUT, output=OUTPUT,
        lookback=held.lookback, horizon=held.horizon, variables=held.variables, step=held.step,
        timestamp=held.timestamp, units="the data's own (the scaler is part of the file)", student=held.student,
        teacher=held.teacher, metrics={role: score.to_json() for role, score in entry.metrics.headline().items()},
        source={"registry": storage.uri(entry.folder), "run_id": held.run_id, "dataset": held.dataset,
                "data_fingerprint": held.data_fingerprint, "created": held.created})
