"""The package's plan: commands at the top, libraries in stage folders, imports only one way down the stages."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ecg_tfx"
COMMANDS = {"convert", "train", "evaluate", "export", "predict", "serve", "make_sample"}
# A library may import its own folder and the folders after it. Training ends a run by evaluating and exporting,
# so it sits above evaluation and serving; dsp is pure signal processing in TF ops and imports nothing of ours.
ORDER = ("training", "serving", "evaluation", "models", "data", "core", "dsp")


def imported_modules(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ecg_tfx"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ecg_tfx")}
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def test_the_top_level_holds_only_the_commands_and_the_stage_folders():
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert modules == COMMANDS
    assert folders == set(ORDER)


def test_libraries_import_only_down_the_stages():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0]
        if own not in ORDER:
            continue  # a command may import any stage
        for module in imported_modules(path):
            stage = stage_of(module)
            if module.split(".")[1:2] and module.split(".")[1] in COMMANDS:
                wrong.append(f"{path.relative_to(PACKAGE)} imports the command {module}")
            elif stage is not None and ORDER.index(stage) < ORDER.index(own):
                wrong.append(f"{path.relative_to(PACKAGE)} ({own}) imports {module} ({stage})")
    assert not wrong, "\n".join(wrong)


def test_serving_reads_no_training_code_and_no_sources():
    for path in (PACKAGE / "serving").rglob("*.py"):
        for module in imported_modules(path):
            assert not module.startswith(("ecg_tfx.training", "ecg_tfx.data.sources")), (path, module)
