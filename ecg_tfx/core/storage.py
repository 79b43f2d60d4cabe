"""File I/O for local paths, gs:// and (with tensorflow-io) s3://: URLs go through `tf.io.gfile`.

Every output appears whole or not at all: it is written under a temporary name, then renamed. Local paths use the
standard library and TensorFlow is imported for URLs only: a conversion into a local folder (TFRecords, JSON, renames,
hashes) needs none of it.
"""

from __future__ import annotations

import glob as globbing
import hashlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from ecg_tfx.core import tfrecord

_FILESYSTEM_MODULES = {"s3": "tensorflow_io", "hdfs": "tensorflow_io", "az": "tensorflow_io"}
_plugin_filesystems_used = False


def _tf() -> ModuleType:
    import tensorflow as tf

    return tf


def is_url(path: str) -> bool:
    """Whether `path` names a remote filesystem (gs://, s3://, ...) rather than a local file."""
    return "://" in path


def enable_filesystem(path: str) -> None:
    """Registers the filesystem a URL needs (s3:// comes from tensorflow-io), or explains why it cannot."""
    scheme = path.split("://", 1)[0] if "://" in path else ""
    module = _FILESYSTEM_MODULES.get(scheme)
    if module is None:
        return
    global _plugin_filesystems_used
    _plugin_filesystems_used = True
    try:
        tfio = __import__(module)
        tfio.experimental  # noqa: B018 - touching the module loads its filesystem plugins
        _tf().io.gfile.exists(path)
    except Exception as error:  # the native library fails to load on TF releases it was not built for
        raise RuntimeError(
            f"{scheme}:// paths need tensorflow-io's filesystems, which did not load with TensorFlow "
            f"{_tf().__version__} ({type(error).__name__}: {error}). Use the pinned versions in pyproject.toml "
            "(tensorflow-io 0.37.1 loads with TensorFlow 2.16-2.17 only)."
        ) from error


def run_app(main) -> None:
    """`absl.app.run(main)` for our CLIs: leaves with `exit_hard_if_s3_touched` once main is done."""
    from absl import app

    try:
        app.run(main)
    except SystemExit as done:
        exit_hard_if_s3_touched(done.code)
        raise


def exit_hard_if_s3_touched(code: int | str | None) -> None:
    """Ends the process now with `code` (as `sys.exit` would) if a tensorflow-io filesystem was used.

    tensorflow-io 0.37's AWS client aborts the interpreter's normal exit ("pure virtual method called",
    exit status 134), so a CLI that touched s3:// flushes its output and leaves with `os._exit` instead.
    Files must be closed by then. Returns (doing nothing) otherwise.
    """
    if not _plugin_filesystems_used:
        return
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def join(*parts: str) -> str:
    """Joins path parts; works for URLs too."""
    return os.path.join(*parts)


def temporary_name(path: str) -> str:
    """A sibling name for writing `path` before the rename that publishes it."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:12]}")


def partial_keras_name(path: str) -> str:
    """Where a `.keras` file is written before the rename that publishes it: a fixed sibling name (Keras writes only
    names ending in .keras), so a write a kill cut short is overwritten by the next, not left behind."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.partial.keras")


def publish(tmp_path: str, path: str) -> None:
    """Moves a finished temporary file into place (replacing any older copy)."""
    if is_url(path):
        _tf().io.gfile.rename(tmp_path, path, overwrite=True)
    else:
        os.replace(tmp_path, path)


def exists(path: str) -> bool:
    return _tf().io.gfile.exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _tf().io.gfile.isdir(path) if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """The names in a folder (sub-folders without a trailing slash), sorted; FileNotFoundError if it is missing."""
    if not is_url(path):
        return sorted(os.listdir(path))
    tf = _tf()
    try:
        return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))
    except tf.errors.NotFoundError as error:
        raise FileNotFoundError(f"{path} does not exist") from error


def tree_bytes(path: str) -> int:
    """Bytes of every file under the folder `path`."""
    if is_url(path):
        gfile = _tf().io.gfile
        return sum(gfile.stat(join(root, name)).length for root, _, names in gfile.walk(path) for name in names)
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def glob(pattern: str) -> list[str]:
    """Paths matching `pattern`, sorted; a local name starting with a dot matches only a pattern that does."""
    return sorted(_tf().io.gfile.glob(pattern) if is_url(pattern) else globbing.glob(pattern))


def makedirs(path: str) -> None:
    """Creates the folder and its parents; nothing if it exists."""
    if is_url(path):
        _tf().io.gfile.makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Deletes a file, or a folder with everything in it."""
    if is_url(path):
        gfile = _tf().io.gfile
        (gfile.rmtree if gfile.isdir(path) else gfile.remove)(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


@contextmanager
def _open_write(path: str) -> Iterator:
    """A binary file open for writing: local with the standard library, a URL with gfile (and its plugins)."""
    if is_url(path):
        enable_filesystem(path)
        with _tf().io.gfile.GFile(path, "wb") as f:
            yield f
    else:
        with open(path, "wb") as f:
            yield f


def publish_dir(tmp_dir: str, path: str, last: str = "saved_model.pb") -> None:
    """Moves a finished folder into place.

    A local rename is atomic. Object stores (gs://, s3://) have no folder rename, so files are copied one by
    one with `last` (the file a loader looks for) copied at the very end: a reader never finds it before
    everything it refers to is there.
    """
    if "://" not in path:
        _tf().io.gfile.rename(tmp_dir, path)
        return
    files = [os.path.relpath(join(root, name), tmp_dir)
             for root, _, names in _tf().io.gfile.walk(tmp_dir) for name in names]
    for relative in sorted(files, key=lambda name: name == last):
        makedirs(os.path.dirname(join(path, relative)))
        _tf().io.gfile.copy(join(tmp_dir, relative), join(path, relative), overwrite=True)
    remove(tmp_dir)


@contextmanager
def local_copy(path: str, with_siblings: bool = False) -> Iterator[str]:
    """A local path to read `path` with libraries that open only local files (wfdb, numpy).

    A local `path` is yielded as it is; a URL (s3://, gs://) is copied into a temporary folder, removed after
    the block. `with_siblings` also copies every file beside it with the same stem (a WFDB record's .hea, .dat
    and .xyz). FileNotFoundError if `path` does not exist.
    """
    enable_filesystem(path)
    if not _tf().io.gfile.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if "://" not in path:
        yield path
        return
    folder, name = path.rsplit("/", 1)
    pattern = join(folder, os.path.splitext(name)[0] + ".*") if with_siblings else path
    with tempfile.TemporaryDirectory(prefix="ecg_tfx-") as scratch:
        for source in _tf().io.gfile.glob(pattern):
            _tf().io.gfile.copy(source, os.path.join(scratch, source.rsplit("/", 1)[1]))
        yield os.path.join(scratch, name)


@contextmanager
def local_output(path: str, last: str = ".hea") -> Iterator[str]:
    """A local path to write `path` with libraries that write only local files (wfdb), published whole.

    The block writes beside the yielded path in a scratch folder (a WFDB record's .hea and .dat). When it succeeds,
    the previous `path + last` is removed, then each file is renamed (local) or copied (s3://, gs://) into `path`'s
    folder, those ending in `last` (the header a reader opens first) at the end: a kill in between leaves a record
    without its header, never a new signal under an old header. When the block fails, nothing is published. A local
    `path`'s scratch folder is `.<name>.partial/` beside it (the same disk, so files are renamed): one a killed write
    left behind is cleared by the next write of the same record.
    """
    enable_filesystem(path)
    url = is_url(path)
    folder, name = path.rsplit("/", 1) if url else os.path.split(os.path.abspath(path))
    if url:
        scratch = tempfile.mkdtemp(prefix="ecg_tfx-")
    else:
        scratch = os.path.join(folder, f".{name}.partial")
        if os.path.isdir(scratch):
            shutil.rmtree(scratch)
        os.makedirs(scratch)
    try:
        yield os.path.join(scratch, name)
        makedirs(folder)
        if exists(path + last):
            remove(path + last)
        for written in sorted(os.listdir(scratch), key=lambda file: (file.endswith(last), file)):
            if url:
                _tf().io.gfile.copy(os.path.join(scratch, written), join(folder, written), overwrite=True)
            else:
                os.replace(os.path.join(scratch, written), os.path.join(folder, written))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file atomically."""
    tmp = temporary_name(path)
    with _open_write(tmp) as f:
        f.write(data)
    publish(tmp, path)


def write_json(path: str, value: object) -> None:
    """Writes JSON atomically, keys sorted, so equal content gives equal bytes."""
    write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_text(path: str) -> str:
    """A whole text file: local with the standard library (OSError if missing), a URL with gfile."""
    if not is_url(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    enable_filesystem(path)
    with _tf().io.gfile.GFile(path, "r") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    """A whole file: local with the standard library (OSError if missing), a URL with gfile."""
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    enable_filesystem(path)
    with _tf().io.gfile.GFile(path, "rb") as f:
        return f.read()


def read_json(path: str) -> dict:
    return json.loads(read_text(path))


@contextmanager
def tfrecord_writer(path: str, compression: str) -> Iterator[tfrecord.TFRecordFile]:
    """Yields a TFRecord writer (`tfrecord`: the bytes TensorFlow writes) on a temporary name; publishes the file
    only if the block succeeds."""
    tmp = temporary_name(path)
    try:
        with _open_write(tmp) as f:
            writer = tfrecord.TFRecordFile(f, compression)
            yield writer
            writer.close()
    except BaseException:
        if exists(tmp):
            remove(tmp)
        raise
    publish(tmp, path)


def sha256(path: str, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with (_tf().io.gfile.GFile(path, "rb") if is_url(path) else open(path, "rb")) as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
