"""Settings of the evaluator; every field is also an environment variable `ALA_EVALUATOR_<FIELD>`."""

import importlib.util
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import SettingsConfigDict

from ala.config import ServiceSettings, tensorboard_dir_field


class EvaluatorOutputs(BaseModel):
    """What the evaluator keeps: the best version, videos."""

    settings_group: ClassVar[str] = "outputs"

    best_dir: Path | None = Field(
        Path(".ala/checkpoints"),
        description="Keep the best version evaluated so far (by sampled mean return) as <dir>/<run>/best.pt, beside the"
        " learner's latest.pt (`ala export --which best`); empty: none.",
    )
    video_dir: Path | None = Field(
        None,
        description="Record one held-out episode of the first and every `video_every`-th evaluated version as"
        " <dir>/<run>/v<version>.mp4 (Gymnasium's RecordVideo; needs `pip install 'ala[video]'`); unset: none.",
    )
    video_every: int = Field(10, ge=1, description="With `video_dir`: a video every this many evaluations.")


class EvaluatorSettings(ServiceSettings, EvaluatorOutputs):
    service: ClassVar[str] = "evaluator"
    model_config = SettingsConfigDict(env_prefix="ALA_EVALUATOR_")

    metrics_port: int = Field(9105, ge=0, le=65535, description="Port of /metrics (0 = a free one).")
    episodes: int = Field(32, ge=1, le=1024, description="Held-out seeds, one episode each, per mode.")
    every_versions: int = Field(
        1, ge=1, description="Evaluate only versions that are multiples of this (the newest such when behind)."
    )
    min_interval_s: float = Field(2.0, ge=0, description="At least this long between the starts of two evaluations.")
    greedy: bool = Field(True, description="Also play greedy (most likely action) episodes; off halves the cost.")
    seed: int = Field(0, description="Seed of the sampled actions.")
    nice: int = Field(
        10, ge=0, le=19, description="Process niceness (`ala evaluator`): scoring yields the CPU to actors and learner."
    )
    torch_threads: int = Field(1, ge=1, description="CPU threads for torch.")
    tensorboard_dir: Path | None = tensorboard_dir_field("evaluator")

    @model_validator(mode="after")
    def _video_can_be_written(self) -> "EvaluatorSettings":
        if self.video_dir is not None and importlib.util.find_spec("moviepy") is None:
            raise ValueError(
                "ALA_EVALUATOR_VIDEO_DIR is set but moviepy, which writes the videos, is not installed:"
                " pip install 'ala[video]'"
            )
        return self
