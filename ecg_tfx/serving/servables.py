"""Loaded SavedModels as TF Serving holds them: every integer version of a model, its SignatureDefs and labels,
and the batcher their model calls go through (None: each request is its own call)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from ecg_tfx.core import storage
from ecg_tfx.serving.batching import Batcher
from ecg_tfx.serving.contract import InputContract
from ecg_tfx.serving.errors import invalid_argument, not_found
from ecg_tfx.serving.versions import list_versions


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version: its SignatureDefs (as saved), the callable signatures, the input contract of our
    exports (None for other SavedModels) and the batcher shared by all loaded versions (None: no batching)."""

    version: int
    path: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    functions: Mapping[str, Any]  # signature name -> ConcreteFunction taking keyword tensors
    contract: InputContract | None = None
    batcher: Batcher | None = None

    @classmethod
    def load(cls, path: str, version: int, batcher: Batcher | None = None) -> Servable:
        saved_model = saved_model_pb2.SavedModel()
        saved_model.ParseFromString(storage.read_bytes(storage.join(path, "saved_model.pb")))
        meta_graph = next((m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags), None)
        if meta_graph is None:
            raise ValueError(f"{path} has no MetaGraph tagged 'serve'")
        loaded = tf.saved_model.load(path, tags=["serve"])
        metadata = loaded.metadata() if callable(getattr(loaded, "metadata", None)) else {}  # our exports' only
        contract = None
        if "input_contract_json" in metadata:
            contract = InputContract.loads(metadata["input_contract_json"].numpy().decode())
        return cls(version, path, dict(meta_graph.signature_def), dict(loaded.signatures), contract, batcher)


@dataclasses.dataclass(frozen=True)
class Model:
    """All loaded versions of one model plus its version labels."""

    name: str
    servables: Mapping[int, Servable]
    labels: Mapping[str, int]

    @classmethod
    def load(cls, name: str, base_path: str, labels: Mapping[str, int] | None = None,
             batcher: Batcher | None = None) -> Model:
        """Loads every integer version folder under `base_path`, whose model calls go through `batcher`; labels
        must name loaded versions."""
        storage.enable_filesystem(base_path)
        if not storage.isdir(base_path):
            raise FileNotFoundError(f"model base path {base_path} does not exist")
        versions = list_versions(base_path)
        if not versions:
            raise FileNotFoundError(f"{base_path} holds no integer version folders")
        servables = {}
        for version in versions:
            servables[version] = Servable.load(storage.join(base_path, str(version)), version, batcher)
            logging.info("loaded %s version %d", name, version)
        labels = dict(labels or {})
        for label, version in labels.items():
            if version not in servables:
                raise ValueError(f"version label {label!r} points at version {version}, which is not loaded "
                                 f"(loaded: {versions})")
        return cls(name, servables, labels)

    def servable(self, version: int | None, label: str | None) -> Servable:
        """The requested version (a number, a label or the latest), with TF Serving's error for a missing one."""
        if label is not None:
            if label not in self.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        if version is None:
            return self.servables[max(self.servables)]
        if version not in self.servables:
            raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
        return self.servables[version]


def parse_version_labels(text: str) -> dict[str, int]:
    """'stable:1,canary:2' -> {'stable': 1, 'canary': 2}."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, _, version = item.partition(":")
        if not re.fullmatch(r"[^/:]+", label) or not version.isdigit():
            raise ValueError(f"bad version label {item!r}; expected label:version, e.g. stable:1")
        labels[label] = int(version)
    return labels
