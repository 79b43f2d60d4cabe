"""Shared fixtures: the real recordings in ../shared/data, skipped with a clear reason when absent."""

from __future__ import annotations

import importlib.metadata
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The pinned stack (constraints.txt) rather than the current one (constraints-current.txt, what Colab installs).
ON_PINNED_STACK = f"tensorflow=={importlib.metadata.version('tensorflow')}" in (REPO / "constraints.txt").read_text()


def _data_dir(name: str) -> pathlib.Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is not present (it lives beside the repository in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def ptb_dir() -> pathlib.Path:
    """The 66-record PTB Diagnostic ECG Database subset."""
    return _data_dir("ptbdb")


@pytest.fixture(scope="session")
def ptbxl_dir() -> pathlib.Path:
    """The first 400 PTB-XL records."""
    return _data_dir("ptbxl")
