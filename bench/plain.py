"""The same work as `timedistill retrain etth1 --set data.horizons=[96] --set teacher.epochs=3
--set distill.epochs=8`, as a plain single-process PyTorch script: no Ray, no Prefect, no storage.
The yardstick of bench/bench_overhead.py.

    python -m bench.plain [--threads 2] [--teacher-epochs 3] [--student-epochs 8]

ETTh1 (the shipped file), the ETT splits (12/4/4 months), the train-split scaler, lookback 720,
horizon 96; the etth1 config's teacher (iTransformer, its preset) and student (the MLP) with its
learning rates, schedules, batch sizes and early stopping; the plain MLP and the distilled MLP in
two loops of their own, the teacher run on each batch (no cache). Prints one JSON object: the
seconds of each part and every test MSE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from timedistill import models
from timedistill.conf import load_config

ROOT = Path(__file__).resolve().parent.parent
MONTH = 30 * 24  # ETTh1's rows per month of the protocol


def windows(series: np.ndarray, start: int, end: int, lookback: int, horizon: int) -> np.ndarray:
    """First rows of every window whose target lies in rows [start, end)."""
    return np.arange(max(start - lookback, 0), end - lookback - horizon + 1)


def batch(series: torch.Tensor, starts: np.ndarray, lookback: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    index = torch.from_numpy(starts)[:, None] + torch.arange(lookback + horizon)  # [B, L+S]
    rows = series[index]  # [B, L+S, C]
    return rows[:, :lookback], rows[:, lookback:]


@torch.inference_mode()
def test_mse(model: torch.nn.Module, series: torch.Tensor, starts: np.ndarray, lookback: int, horizon: int) -> float:
    model.eval()
    squares, count = 0.0, 0
    for begin in range(0, len(starts), 256):
        x, y = batch(series, starts[begin : begin + 256], lookback, horizon)
        error = model(x).prediction - y
        squares, count = squares + float(error.square().sum()), count + error.numel()
    return squares / count


def fit(model: torch.nn.Module, loss_of, parameters, series: torch.Tensor, splits: dict[str, np.ndarray],
        lookback: int, horizon: int, *, epochs: int, lr: float, decay: float, hold: int, patience: int,
        batch_size: int, seed: int) -> torch.nn.Module:
    """Adam, the lr kept for `hold` epochs then multiplied by `decay` every epoch, early stopping
    on the validation MSE; returns the model with its best weights."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    best, best_state, bad = float("inf"), None, 0
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * decay ** max(epoch + 1 - max(hold, 1), 0)
        model.train()
        order = np.random.default_rng(seed + epoch).permutation(len(splits["train"]))
        for begin in range(0, len(order) - batch_size + 1, batch_size):
            x, y = batch(series, splits["train"][order[begin : begin + batch_size]], lookback, horizon)
            loss = loss_of(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        score = test_mse(model, series, splits["val"], lookback, horizon)
        if score < best:
            best, best_state, bad = score, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=8)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    config = load_config("etth1")
    lookback, horizon = config.data.lookback, 96
    frame = pl.read_csv(ROOT / "data" / "ETTh1.csv").drop("date")
    values = frame.to_numpy().astype(np.float64)
    train_end, val_end, test_end = 12 * MONTH, 16 * MONTH, 20 * MONTH
    mean, std = values[:train_end].mean(axis=0), values[:train_end].std(axis=0)
    series = torch.from_numpy(((values - mean) / std).astype(np.float32))
    splits = {"train": windows(values, 0, train_end, lookback, horizon),
              "val": windows(values, train_end, val_end, lookback, horizon),
              "test": windows(values, val_end, test_end, lookback, horizon)}
    seconds = {"data": time.perf_counter() - began}

    # 1. the teacher, on the ground truth
    began = time.perf_counter()
    settings = config.teacher
    torch.manual_seed(settings.seed)
    teacher = models.build_model(settings.name, lookback=lookback, horizon=horizon, n_vars=values.shape[1],
                                 preset="etth1")
    teacher = fit(teacher, lambda x, y: torch.nn.functional.mse_loss(teacher(x).prediction, y),
                  teacher.parameters(), series, splits, lookback, horizon, epochs=args.teacher_epochs,
                  lr=settings.lr, decay=settings.lr_decay, hold=1, patience=settings.patience,
                  batch_size=settings.batch_size, seed=settings.seed).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    seconds["teacher"] = time.perf_counter() - began

    # 2. the plain MLP, on the ground truth
    distill = config.distill

    def student() -> torch.nn.Module:
        torch.manual_seed(distill.seed)
        return models.build_model("mlp", lookback=lookback, horizon=horizon, n_vars=values.shape[1],
                                  preset="etth1")

    common = {"epochs": args.student_epochs, "lr": distill.lr, "decay": 0.5, "hold": distill.lr_hold_epochs,
              "patience": distill.patience, "batch_size": distill.batch_size, "seed": distill.seed}
    began = time.perf_counter()
    plain = student()
    plain = fit(plain, lambda x, y: torch.nn.functional.mse_loss(plain(x).prediction, y), plain.parameters(),
                series, splits, lookback, horizon, **common)
    seconds["mlp"] = time.perf_counter() - began

    # 3. the distilled MLP, with the teacher run on every batch
    began = time.perf_counter()
    distilled = student()
    loss = models.TimeDistillLoss(teacher.feature_dim, distilled.feature_dim, distill.alpha, distill.beta,
                                  tau=distill.tau, scales=distill.scales)

    def distill_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            taught = teacher(x)
        prediction, feature = distilled(x)
        features = models.reduce_feature_width(taught.feature, distill.feature_max_dim)
        return loss(prediction, feature, taught.prediction, features, y)[0]

    distilled = fit(distilled, distill_loss, [*distilled.parameters(), *loss.parameters()], series, splits,
                    lookback, horizon, **common)
    seconds["distilled"] = time.perf_counter() - began

    scores = {name: test_mse(model, series, splits["test"], lookback, horizon)
              for name, model in (("teacher", teacher), ("mlp", plain), ("student", distilled))}
    print(json.dumps({"seconds": seconds, "test_mse": scores}))


if __name__ == "__main__":
    sys.exit(main())
