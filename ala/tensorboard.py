"""TensorBoard scalars, the view of a run that SB3, CleanRL and Sample Factory users open first.

Off by default; `ALA_TENSORBOARD_DIR=.ala/tensorboard` (or `tensorboard_dir` at the top of the configuration file)
turns it on for the learner and the evaluator together. Each process writes its own event files under
`<dir>/<run>/<service>-<instance>`, so `tensorboard --logdir .ala/tensorboard` shows runs side by side and a learner's
losses next to the evaluator's returns. The x axis is env steps, as SB3's `num_timesteps`: the learner's samples
trained, and for an evaluation the env steps behind the version it scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

FLUSH_S = 5.0
"""Events reach the file within this long (SummaryWriter's own default is two minutes)."""


class Scalars:
    """Scalars for one process; every method does nothing when no directory was given."""

    def __init__(self, directory: Path | None, run: str, name: str) -> None:
        self.directory = directory / run / name if directory is not None else None
        self._writer: SummaryWriter | None = None
        if self.directory is not None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard, only when it is asked for

            self._writer = SummaryWriter(log_dir=str(self.directory), flush_secs=int(FLUSH_S))

    def add(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        """One point per value at `step`; a name with no '/' goes under `prefix`."""
        if self._writer is None:
            return
        for name, value in values.items():
            tag = name if "/" in name or not prefix else f"{prefix}/{name}"
            self._writer.add_scalar(tag, float(value), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
