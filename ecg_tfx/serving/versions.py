"""Integer version folders of a model, as TF Serving reads them (`<model_base_path>/<version>/`), on any filesystem."""

from __future__ import annotations

from ecg_tfx.core import storage


def list_versions(model_dir: str) -> list[int]:
    """The integer version folders under `model_dir`, ascending ([] if it does not exist)."""
    if not storage.isdir(model_dir):
        return []
    return sorted(int(name) for name in storage.listdir(model_dir) if name.isdigit())


def next_version(model_dir: str) -> int:
    """One more than the highest version under `model_dir` (1 if none)."""
    return max(list_versions(model_dir), default=0) + 1
