"""Progress bars for long work (rich), quiet where nobody is watching.

Rank 0 of a training job shows one bar; other ranks and ``enabled=False``
show nothing. In a terminal the bar redraws in place; in a log file or CI it
prints nothing but the final state, so logs stay readable.
"""

from __future__ import annotations

import signal
import threading
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["TrainingProgress", "StopRequest"]


class TrainingProgress:
    """A context manager showing optimizer steps done out of ``total``, with the last logged loss.

    Args:
        total: steps in the whole run.
        completed: steps already done (a resumed run starts part-way).
        enabled: draw the bar (rank 0 only).
        description: the label in front of the bar.
    """

    def __init__(self, total: int, completed: int = 0, enabled: bool = True, description: str = "training"):
        self.enabled = enabled
        self.description = description
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=total, completed=completed, loss="")

    def __enter__(self) -> "TrainingProgress":
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._progress.stop()

    def update(self, completed: int, loss: float | None = None) -> None:
        """Move the bar to ``completed`` steps; show ``loss`` when given (kept until the next one)."""
        fields = {"loss": f"loss {loss:.4f}"} if loss is not None else {}
        self._progress.update(self._task, completed=completed, **fields)


class StopRequest:
    """While active, the first SIGINT/SIGTERM only sets :attr:`requested`; a second one stops at once.

    Long loops check :attr:`requested` at a safe point (the end of an
    optimizer step), write a checkpoint and leave. Handlers can only be set in
    the main thread; elsewhere this does nothing and signals act as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"stopped at once by a second signal {signum}")
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
