"""Terminal progress for long commands: a line per step, a bar per epoch, on stderr (so that
stdout stays clean for --json)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StepProgress:
    """Listens to the training workers' events and to the flow's step boundaries."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, transient=True, disable=not enabled,
        )
        self.bars: dict[tuple[Any, ...], Any] = {}

    def __enter__(self) -> StepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def step(self, name: str, seconds: float, cached: bool, detail: str = "") -> None:
        if not self.enabled:
            return
        state = "[dim]cached[/]" if cached else f"{seconds:6.1f}s"
        self.progress.console.print(f"  [green]✓[/] {name:<10} {state}  {detail}", highlight=False)

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        stage, horizon = event.get("stage", "train"), event.get("horizon", "")
        key = (stage, horizon, event.get("epoch"))
        if event["type"] == "batch":
            if key not in self.bars:
                description = f"{stage} h={horizon} epoch {event['epoch']}/{event['epochs']}"
                self.bars[key] = self.progress.add_task(description, total=event["steps"])
            self.progress.update(self.bars[key], completed=event["step"] + 1)
        elif event["type"] == "epoch":
            bar = self.bars.pop(key, None)
            if bar is not None:
                self.progress.remove_task(bar)
            scores = "  ".join(f"{name.split('/')[0]} val_mse {value:.4f}" for name, value in event.items()
                               if name.endswith("/val_mse"))
            self.progress.console.print(f"    {stage} h={horizon} epoch {event['epoch']}/{event['epochs']}  "
                                        f"{scores}  ({event['epoch_seconds']:.1f}s)", highlight=False)
