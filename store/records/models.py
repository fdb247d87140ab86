"""What a forecaster is and how it trained: its spec (what its weights load into), its scores, its
epochs, and where its Ray Train run ran."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from timedistill.store.record import Record


class ModelSpec(Record):
    """How to build a forecaster: its name, window and every hyperparameter (what its weights
    need to be loaded into)."""

    name: str
    lookback: int
    horizon: int
    n_vars: int
    hparams: dict[str, Any] = Field(default_factory=dict)
    quantiles: list[float] = Field(default_factory=list, exclude_if=lambda levels: not levels)  # [] the point alone

    def point(self) -> ModelSpec:
        """The same model without quantile outputs (the baseline of a quantile student)."""
        return self.model_copy(update={"quantiles": []})

    def describe(self) -> str:
        return f"{self.name} (lookback {self.lookback}, horizon {self.horizon}, {self.n_vars} variables)"


class Headline(Record):
    """The scores a model is compared by: what the registry, the server and the flow show."""

    test_mse: float
    test_mae: float
    params: int
    latency_ms: float | None  # median forward pass of a batch (ResultRow says which batch and threads)


class ModelScore(Headline):
    """One model's line in a comparison."""

    name: str
    val_mse: float
    epochs: int

    def headline(self) -> Headline:
        return Headline.model_validate(self.model_dump())


class Epoch(Record):
    """One epoch of a trainee, as its run logged it."""

    epoch: int  # 1-based
    train_loss: float  # the mean over the epoch's batches
    val_mse: float  # on the whole validation split
    val_mae: float
    seconds: float  # training time of the epoch, without validation and checkpointing
    lr: float
    improved: bool  # the best validation MSE so far: its weights are kept
    parts: dict[str, float] = Field(default_factory=dict)  # the loss's terms (sup, scale, period, ...), and
    # with several teachers whose weights are learned, each weight (teacher_weight_0, ...)


class TrainedModel(Record):
    """A forecaster trained on Ray Train: what it is and how it scored."""

    name: str
    hparams: dict[str, Any]
    quantiles: list[float] = Field(default_factory=list, exclude_if=lambda levels: not levels)  # student.quantiles
    params: int
    val_mse: float  # the best epoch's, on the whole validation split
    best_epoch: int  # 1-based; its weights are the ones kept
    epochs: int  # epochs run (early stopping may end before the configured number)
    test_mse: float
    test_mae: float
    history: list[Epoch]

    def score(self) -> ModelScore:
        """Its line in a comparison; its latency is the evaluate step's to measure (ResultRow)."""
        return ModelScore.model_validate(self.model_dump(exclude={"hparams", "history", "quantiles"})
                                         | {"latency_ms": None})


class TrainingRun(Record):
    """What every Ray Train run records: the data and window it trained on, and where it ran."""

    dataset: str
    data_fingerprint: str
    lookback: int
    horizon: int
    n_vars: int
    device: str
    resumed_from: int  # the epoch the last attempt started from: 0 unless a checkpoint was restored
    worker_nodes: list[str]  # the Ray node of every rank
    peak_memory_mb: list[float]  # of every rank
    ray_run: str  # Ray Train's run folder (its checkpoints)
    variables: list[str]
    started: str  # when its training began (horizons in parallel overlap)
    created: str  # when it finished
    warm_from: str | None  # the folder of the weights it started from (a warm start); None: from scratch
    # of every rank, before the job's setup (Ray, torch, the worker): the run added peak - start
    start_memory_mb: list[float]


def training(history: list[Epoch]) -> str:
    """How long the epochs themselves took: the rest of a training step is Ray Train's."""
    return f"{len(history)} epoch{'s' if len(history) != 1 else ''}, {sum(e.seconds for e in history):.1f}s"
