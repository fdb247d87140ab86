"""Terminal progress for long commands: a line per step, a bar per epoch, on stderr (so that
stdout stays clean for --json)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from timedistill.tasks.events import BatchStarted, Event


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
        state = "[dim] cached[/]" if cached else f"{seconds:6.1f}s"  # both 7 wide
        self.progress.console.print(f"  [green]✓[/] {name:<10} {state}  {detail}", highlight=False)

    def note(self, text: str) -> None:
        """Something the user may want once: where a dashboard is, which run this is."""
        if self.enabled:
            self.progress.console.print(f"  [dim]{text}[/]", highlight=False)

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        key = (event.stage, event.horizon, event.epoch)
        if isinstance(event, BatchStarted):
            if key not in self.bars:
                self.bars[key] = self.progress.add_task(event.describe(), total=event.steps)
            self.progress.update(self.bars[key], completed=event.step + 1)
        else:
            bar = self.bars.pop(key, None)
            if bar is not None:
                self.progress.remove_task(bar)
            self.progress.console.print(f"    {event.describe()}", highlight=False)
