"""Everything a training run is told (the twin of the converter's ConversionConfig); `train` turns flags into one."""

from __future__ import annotations

import dataclasses

from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.dsp.augment import AugmentConfig
from ecg_tfx.models import MODELS
from ecg_tfx.serving.tflite import VARIANTS, check_variants
from ecg_tfx.training.distribute import PRECISIONS, STRATEGIES

LR_SCHEDULES = ("plateau", "one_cycle")
# Fields that say where a run reads and writes, how fast it runs, how it is evaluated and what follows training: a
# killed run may resume with them changed. Every other field changes what training computes.
_NOT_TRAINING = frozenset({"data_dir", "run_dir", "strategy", "virtual_cpus", "cache", "deterministic",
                           "eval_stride_seconds", "export", "export_dir", "model_name", "tflite", "tflite_variants"})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run: data and run folders, model, optimization, windows, preprocessing, augmentation,
    distribution and export. Lengths in seconds, frequencies in Hz; 0 turns a filter or augmentation off."""

    data_dir: str  # TFRecord shards + manifest.json (local, gs:// or s3://)
    run_dir: str  # where the run's model, logs, plots and metrics go
    # Model and optimization.
    model: str = "cnn"
    epochs: int = 30
    batch_size: int = 64  # global batch, split over replicas
    learning_rate: float = 1e-3  # peak learning rate
    lr_schedule: str = "plateau"  # plateau: halved when the monitor stalls; one_cycle: warm-up then cosine decay
    weight_decay: float = 0.0  # decoupled (AdamW); 0 = Adam
    dropout: float | None = None  # None: the architecture's own
    class_weights: bool = True  # weight examples by inverse class frequency
    monitor: str = "val_auc"  # for early stopping, the LR plateau and the best model
    patience: int = 10  # epochs without improvement before stopping
    warmup_epochs: int = 3  # epochs before the best model may be chosen (a noisy early epoch is not kept)
    lr_patience: int = 4  # epochs without improvement before the LR is cut (plateau)
    seed: int = 0
    # Warm start (`training.warm_start`, `training.fine_tuning`).
    init_from: str = ""  # a finished run folder whose model.keras this run starts from; '' = a fresh model
    freeze_epochs: int = 0  # the body is frozen for the first N epochs (needs init_from)
    body_lr_factor: float = 1.0  # the body learns at f x the schedule's rate (needs init_from)
    # Windows and preprocessing (the same in serving).
    input_seconds: float = 0.0  # model input; 0 = the stored window (training crops it, evaluation slides it)
    eval_stride_seconds: float = 1.0  # step of the sliding test-time inputs
    highpass_hz: float = 0.5
    lowpass_hz: float = 0.0
    powerline_hz: float = 0.0
    # Augmentation (training only; amplitudes in standardized units).
    scale_range: tuple[float, float] | None = (0.9, 1.1)
    noise_std: float = 0.0
    wander_amplitude: float = 0.0
    max_shift_seconds: float = 0.0
    lead_dropout: float = 0.0
    # Performance and distribution.
    strategy: str = "auto"
    precision: str = "auto"
    virtual_cpus: int = 0  # split the CPU into N logical devices (mirrored training without accelerators)
    cache: str = "memory"  # preprocessed windows: 'memory', a file prefix, or '' (off)
    deterministic: bool = False  # deterministic TF ops: a rerun or a resumed run repeats the weights exactly
    # Export at the end.
    export: bool = True
    export_dir: str = ""  # default <run_dir>/export
    model_name: str = "ecg"
    tflite: bool = False
    tflite_variants: tuple[str, ...] = VARIANTS  # which TFLite variants --tflite writes

    def __post_init__(self) -> None:
        choices = {"model": sorted(MODELS), "lr_schedule": LR_SCHEDULES, "strategy": STRATEGIES,
                   "precision": PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if min(self.epochs, self.batch_size, self.patience, self.lr_patience) < 1:
            raise ValueError("epochs, batch_size, patience and lr_patience must be at least 1")
        if self.freeze_epochs < 0 or self.body_lr_factor <= 0:
            raise ValueError(f"freeze_epochs must be >= 0 and body_lr_factor > 0, got {self.freeze_epochs}, "
                             f"{self.body_lr_factor}")
        if not self.init_from and (self.freeze_epochs or self.body_lr_factor != 1):
            raise ValueError("--freeze_epochs and --body_lr_factor fine-tune a pretrained body: they need --init_from")
        check_variants(self.tflite_variants)
        if self.scale_range is not None and not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range takes two gains low,high with 0 < low <= high, got {self.scale_range}")

    def training_settings(self) -> dict:
        """The fields that decide what training computes, as JSON holds them: a run resumes only under the same."""
        return {field.name: list(value) if isinstance(value := getattr(self, field.name), tuple) else value
                for field in dataclasses.fields(self) if field.name not in _NOT_TRAINING}

    def model_spec(self, manifest: Manifest) -> ModelSpec:
        """The spec of the model this config trains on `manifest`'s data."""
        return manifest.model_spec(self.model, self.input_seconds, self.eval_stride_seconds,
                                   self.highpass_hz or None, self.lowpass_hz or None, self.powerline_hz or None)

    def augment_config(self, spec: ModelSpec) -> AugmentConfig:
        """Training augmentation at the spec's rate: random crops to its input length, then these draws."""
        return AugmentConfig(
            crop_samples=spec.input_samples if spec.input_samples < spec.window_samples else None,
            max_shift_samples=round(self.max_shift_seconds * spec.sample_rate_hz), scale_range=self.scale_range,
            noise_std=self.noise_std, wander_amplitude=self.wander_amplitude, lead_dropout=self.lead_dropout,
            sample_rate_hz=spec.sample_rate_hz)
