"""The system seam: outside ``unmask_jax/systems/`` (and the configs), the code that trains,
restores, evaluates and predicts never names a system. A system's name, module or class in
an identifier, an import, or a string the code compares or looks up fails; docstrings,
comments and messages (exception, log and print arguments, f-strings) don't count, nor the
values earlier versions recorded (``checkpoints.RENAMED_VALUES``: history, read once to map
an old run's value to today's generic one)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from unmask_jax import systems

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["unmask_jax/predict", "unmask_jax/evaluate.py", "unmask_jax/checkpoints.py",
           "unmask_jax/train.py", "unmask_jax/state.py", "data_pipelines",
           # The other modes' code around the systems, clean too: kept so.
           "unmask_jax/run_config.py", "unmask_jax/programs.py", "unmask_jax/aot.py",
           "unmask_jax/validation.py", "unmask_jax/summary.py", "unmask_jax/exits.py",
           "unmask_jax/export/checkpoint.py", "unmask_jax/compare.py", "unmask_jax/report.py"]
#: Module-level names whose values are history (old recorded values), not lookups.
_HISTORY = {"RENAMED_VALUES", "RENAMED_KEYS", "REMOVED_KEYS"}
#: Calls whose arguments are messages for people, not values the code acts on.
_MESSAGE_CALLS = re.compile(r"(Error|Exception|Warning|warning|warn|info|debug|error|"
                            r"exception|critical|print|log)$")


def system_words() -> set[str]:
    """Registry names, classes' ``name``s, class names and module names of every system."""
    words = set(systems.SYSTEMS)
    for module in ("pix2pix", "ganmasker", "unveilify"):
        words.add(module)
    for obj in vars(systems).values():
        mod = getattr(obj, "__module__", "") or ""
        if mod.startswith("unmask_jax.systems.") and not mod.endswith(".base"):
            words.add(mod.rsplit(".", 1)[1])
    for mod_name in {"pix2pix", "ganmasker", "unveilify"}:
        mod = __import__(f"unmask_jax.systems.{mod_name}", fromlist=["_"])
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, systems.System) and obj is not \
                    systems.System and obj.__module__ == mod.__name__:
                words.add(obj.__name__)
                if obj.name:
                    words.add(obj.name)
    return {w for w in words if w}


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def findings(source: str, words: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each use of a system word the code acts on."""
    tree = ast.parse(source)
    parents: dict[ast.AST, ast.AST] = {}
    docstrings: set[ast.AST] = set()
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(body[0].value)
    pattern = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(
        re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")(?![A-Za-z0-9])",
        re.IGNORECASE)

    def is_message(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
                    isinstance(t, ast.Name) and t.id in _HISTORY
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])):
                return True
            if isinstance(node, ast.JoinedStr):
                return True
            if isinstance(node, ast.Call) and _MESSAGE_CALLS.search(_call_name(node)):
                return True
            if isinstance(node, ast.Raise):
                return True
        return False

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and pattern.search(node.id):
            out.append((node.lineno, f"name {node.id}"))
        elif isinstance(node, ast.Attribute) and pattern.search(node.attr):
            out.append((node.lineno, f"attribute {node.attr}"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            for n in names:
                if any(pattern.fullmatch(part) for part in n.split(".")):
                    out.append((node.lineno, f"import {n}"))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node not in docstrings and pattern.search(node.value)
              and not is_message(node)):
            out.append((node.lineno, f"string {node.value!r}"))
    return out


def checked_files() -> list[Path]:
    files = []
    for entry in CHECKED:
        p = ROOT / entry
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return files


def test_the_system_words_are_known():
    words = system_words()
    assert {"pix2pix", "ganmasker", "unveilify", "GANMaskerSystem", "GANMaskerSegSystem",
            "UnVeilifySystem", "Pix2PixSystem", "ganmasker_seg"} <= words


def test_the_checker_finds_what_it_must_and_skips_messages():
    words = {"ganmasker", "unveilify", "GANMaskerSystem"}
    code = '''
"""Docstring naming ganmasker."""
from unmask_jax.systems.ganmasker import load
import unmask_jax.systems.unveilify as u
RENAMED_VALUES = {"data.identity_augment": {"unveilify": "flip_rotate"}}
def f(config, frozen, mode):
    """unveilify in a docstring."""
    frozen.pop("segmenter")
    if mode == "unveilify":
        pass
    if config.system in ("pix2pix", "ganmasker"):
        pass
    x = {"ganmasker": 1}["ganmasker"]
    y = GANMaskerSystem
    log.warning("ganmasker run %s", 1)
    raise ValueError("not a GANMasker stage-1 run")
    raise ValueError(f"{mode}: unveilify needs an identity photo")
'''
    lines = sorted({line for line, _ in findings(code, words)})
    assert lines == [3, 4, 9, 11, 13, 14], findings(code, words)


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_system_is_named_outside_systems(path):
    found = findings(path.read_text(), system_words())
    assert not found, f"{path.relative_to(ROOT)} names a system: {found}"
