"""The exported student's latency: the ONNX file in onnxruntime and the TorchScript file against the
registered student in PyTorch, at batch 1 and 32, on the CPU.

    python -m bench.bench_export [--threads 2] [--repeats 200]

The student is an ETTh1-shaped MLP (lookback 720, horizon 96, 7 variables, random weights: the
cost does not depend on them), registered and exported as `timedistill export` does; every
runtime gets the same float32 histories in data units and returns forecasts in data units (the
scaler is part of each). Each cell is the median of --repeats calls after warm-up; the three
runtimes alternate within each repeat, so that they share the machine's state.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from bench.bench_serving import MODEL, make_registry
from bench.report import markdown_table, write_section
from timedistill.store.forecaster import ForecastModel
from timedistill.store.storage import Storage
from timedistill.tasks.export import export

# BENCHMARKS.md: what the table says, at most three lines under it (bench/report.py)
READING = {
    "export": """\
The ONNX file in onnxruntime is the fastest at both batch sizes, then the TorchScript file, then the registered
student in PyTorch; all three take and return data units, so the scaler is inside each measurement.""",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    import onnxruntime

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_registry(root / "registry-root")
        storage, out = Storage(str(root / "registry-root")), Storage(str(root / "export"))
        onnx_card = export(storage, MODEL, None, "onnx", out)
        script_card = export(storage, MODEL, None, "torchscript", out)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(out.path(onnx_card.file), options)
        scripted = torch.jit.load(out.path(script_card.file))
        registered = ForecastModel.from_registry(storage, MODEL)
        rows = []
        for batch in (1, 32):
            x = np.random.default_rng(batch).normal(5, 2, (batch, 720, 7)).astype(np.float32)
            runners = {
                "PyTorch (registered student + scaler)": lambda x=x: registered.forecast(x),
                "TorchScript file": lambda x=x: scripted(torch.from_numpy(x)),
                "ONNX file, onnxruntime": lambda x=x: session.run(None, {onnx_card.input: x}),
            }
            times: dict[str, list[float]] = {name: [] for name in runners}
            with torch.inference_mode():
                for _ in range(10):  # warm-up
                    for run in runners.values():
                        run()
                for _ in range(args.repeats):
                    for name, run in runners.items():
                        began = time.perf_counter()
                        run()
                        times[name].append((time.perf_counter() - began) * 1000)
            base = statistics.median(times["PyTorch (registered student + scaler)"])
            for name, samples in times.items():
                median = statistics.median(samples)
                rows.append([batch, name, f"{median:.3f}", f"{base / median:.2f}x"])
    write_section("export", "\n".join([
        "## Exported students: latency (ETTh1-shaped MLP, lookback 720, horizon 96, 7 variables)",
        "",
        f"Command: `python -m bench.bench_export --threads {args.threads} --repeats {args.repeats}` ({date.today()}, "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f} at the end). Median "
        "milliseconds per call, data units in and out; speed-up against the registered student in PyTorch "
        "(above 1 is faster).",
        "",
        markdown_table(["batch", "runtime", "ms", "vs PyTorch"], rows),
    ]), READING["export"])


if __name__ == "__main__":
    sys.exit(main())
