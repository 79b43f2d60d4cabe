"""The layout of a training run folder (WORKSPACE.md): the one place that names its files."""

from __future__ import annotations

import dataclasses

from ecg_tfx.core import storage

MODEL = "model.keras"  # the final model (EarlyStopping restored the best weights): evaluated and exported
BEST = "best.keras"  # the best checkpoint after the warm-up epochs
CHECKPOINTS = {"final": MODEL, "best": BEST}


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """Paths inside a run folder `path` (local, gs:// or s3://)."""

    path: str

    def file(self, name: str) -> str:
        return storage.join(self.path, name)

    @property
    def model(self) -> str:
        return self.file(MODEL)

    @property
    def best(self) -> str:
        return self.file(BEST)

    def checkpoint(self, name: str) -> str:
        """The Keras model file of a checkpoint name in CHECKPOINTS ('final' or 'best')."""
        return self.file(CHECKPOINTS[name])

    @property
    def history(self) -> str:
        return self.file("history.csv")

    @property
    def history_plot(self) -> str:
        return self.file("training_history.png")

    @property
    def labels(self) -> str:
        return self.file("labels.json")

    @property
    def decision(self) -> str:
        """The Decision fitted on validation (calibration, thresholds, abstention) that the export serves."""
        return self.file("decision.json")

    @property
    def flags(self) -> str:
        return self.file("flags.txt")

    @property
    def run_info(self) -> str:
        return self.file("run_info.json")

    @property
    def backup(self) -> str:
        """BackupAndRestore's state while training (a killed run resumes from it)."""
        return self.file("backup")

    @property
    def logs(self) -> str:
        """TensorBoard logs."""
        return self.file("logs")

    @property
    def export(self) -> str:
        """Where training exports at its end, unless told otherwise."""
        return self.file("export")

    @property
    def workers(self) -> str:
        """Multi-worker training: non-chief workers' own folders live here while they train."""
        return self.file(".workers")

    def evaluation_dir(self, split: str, checkpoint: str = "final") -> str:
        """Where an evaluation goes: test in the folder itself, other splits in <split>/; best.keras's under best/."""
        base = self.path if checkpoint == "final" else self.file("best")
        return base if split == "test" else storage.join(base, split)

    def zero_shot_dir(self, source: str, split: str, checkpoint: str = "final") -> str:
        """Where an evaluation on another source's data goes (a run trained on synthetic ECGs scoring real
        ones): zero_shot_<source>_<split>/, under best/ for best.keras, so it never replaces the run's own."""
        base = self.path if checkpoint == "final" else self.file("best")
        return storage.join(base, f"zero_shot_{source}_{split}")
