"""Runs a script in a separate interpreter where ecg_tfx cannot be imported: what an export needs is stock TF."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "ecg_tfx":
                raise ImportError("ecg_tfx is blocked in this test")

    sys.meta_path.insert(0, Block())
    try:
        import ecg_tfx
        sys.exit("ecg_tfx is importable: the test would prove nothing")
    except ImportError:
        pass
""")


def run_plain_tf(script: str, *args: str, cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`script` (dedented) after the blocking prelude, run in `cwd` (not the repository: ecg_tfx is off the path)."""
    return subprocess.run([sys.executable, "-I", "-c", PRELUDE + textwrap.dedent(script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
