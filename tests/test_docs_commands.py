"""Every command that README.md and launch/README.md show in a ```bash block runs as written.

The documents are parsed when the tests are collected, so the tests follow the documents:

* fenced ``bash``/``sh``/``shell`` blocks; lines ending in ``\\`` are joined with the next
  line, ``#`` comments dropped, ``a && b`` split into two commands;
* a line that starts with ``--`` (shown under a comment as an alternative, e.g. another data
  source) is the first line of the block's last ``python -m unmask_jax.main`` command
  (``python -m unmask_jax.main --config=... --workdir=...``) followed by these overrides;
* ``[...]`` around an argument marks it optional in the docs: the argument is used, with the
  placeholders ``DIR``, ``OUT``, ``N`` filled in;
* ``...`` as the command after a launcher's ``--`` stands for the block's previous command;
* a command with ``<placeholders>`` is a synopsis, not a command: listed, not run.

What runs, each in a subprocess from the repository root, on tiny datasets written by
``tests/fixtures.py`` under ``tmp_path`` (``/data/lfw`` -> a generated LFW tree, and so on)
and with every workdir/output path moved under ``tmp_path``:

* ``python -m unmask_jax.main ...``: with ``--mode=summary`` in place of the documented mode
  (summary validates the whole config: unknown keys, bad values, data config, and builds
  every network); exit 0 and the parameter table are checked;
* ``python launch/local_multiprocess.py ... -- python -m unmask_jax.main ...``: the launcher
  as written (its processes, devices, SLURM emulation, signal options) around the same
  command in summary mode;
* ``python -m data_pipelines.preview`` / ``python -m data_pipelines.landmarks``: as written;
* ``launch/tpu_pod.sh ...``: as written plus ``--dry-run`` (prints the gcloud commands).

Commands that cannot run offline or that are not commands of this project are listed in
``NOT_RUN`` with the reason; a documented command that is neither run nor listed there
fails ``test_every_documented_command_is_classified``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fixtures

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "launch/README.md")
SHELL_FENCES = ("bash", "sh", "shell")

MAIN = ("python", "-m", "unmask_jax.main")
PREVIEW = ("python", "-m", "data_pipelines.preview")
LANDMARKS = ("python", "-m", "data_pipelines.landmarks")
LAUNCHER = ("python", "launch/local_multiprocess.py")
TPU_POD = ("launch/tpu_pod.sh",)

# Documented commands that these tests do not run: (first words, reason).
NOT_RUN: tuple[tuple[tuple[str, ...], str], ...] = (
    (("pip", "install"), "installs packages (network)"),
    (("python", "-m", "pytest"), "the whole test suite, which contains this test"),
    (("python", "benchmarks/"), "benchmark: minutes of CPU, measures speed, no doc overrides"),
    (("sbatch",), "needs a SLURM cluster"),
    (("gcloud",), "needs Google Cloud"),
    (("tensorboard",), "a server that does not exit"),
    (("python", "-m", "unmask_jax.demo"), "a web server that does not exit (tests/test_demo.py "
                                          "serves and uses the page)"),
)
# Shell variable assignments (NAME=value ...) are kept for the commands after them.
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PLACEHOLDER = re.compile(r"<[A-Za-z_][\w-]*>")
_PARAM_LINE = re.compile(r"^(?:\[p0\] )?\s+(\S+)\s+([\d,]+) params\s*$", re.M)
# Argument values that name a dataset folder in the docs.
_DATA_VALUE = re.compile(r"^(/data(/|$)|PATH)")
# Flags whose value is a folder or file the command writes: moved under tmp_path.
_OUTPUT_FLAGS = ("--workdir", "--export_dir", "--out", "--output", "--log_dir", "--cache_dir",
                 "--fetch")
_FILL = {"N": "1"}  # placeholders in optional arguments (besides paths)


@dataclasses.dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int                 # line of the command's first line in the document
    text: str                 # the command as written (continuations joined)
    kind: str                 # main / launcher / preview / landmarks / tpu_pod / not_run / synopsis
    argv: tuple[str, ...]     # as written, optional [...] brackets removed
    env: tuple[tuple[str, str], ...] = ()  # shell variables assigned earlier in the block
    reason: str = ""          # for not_run / synopsis

    @property
    def id(self) -> str:
        words = [a for a in self.argv[2:] if not a.startswith("--workdir")] if self.argv else []
        return f"{self.doc}:{self.line}:{self.kind}:" + " ".join(words)[:90]


def _shell_blocks(text: str):
    """(first line number, lines) of each fenced shell block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```") and fence[3:].strip() in SHELL_FENCES:
            start = i + 1
            j = start
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            yield start + 1, lines[start:j]
            i = j + 1
        else:
            i += 1


def _logical_lines(first: int, lines: list[str]):
    """(line number, first physical line, joined text) with backslash continuations joined."""
    i = 0
    while i < len(lines):
        start, parts = i, []
        while True:
            raw = lines[i].rstrip()
            if raw.endswith("\\"):
                parts.append(raw[:-1])
                i += 1
                if i < len(lines):
                    continue
            else:
                parts.append(raw)
                i += 1
            break
        joined = " ".join(p.strip() for p in parts).strip()
        if joined and not joined.startswith("#"):
            yield first + start, parts[0].strip(), joined


def _split(text: str) -> list[list[str]]:
    words = shlex.split(text, comments=True)
    commands, current = [], []
    for w in words:
        if w in ("&&", ";"):
            commands.append(current)
            current = []
        else:
            current.append(w)
    commands.append(current)
    return [c for c in commands if c]


def _unbracket(argv: list[str]) -> list[str]:
    """``[--export_pt]`` -> ``--export_pt`` (optional arguments are used)."""
    return [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in argv]


def _starts(argv, prefix) -> bool:
    if len(argv) < len(prefix):
        return False
    head = ["python" if a == "python3" else a for a in argv[:len(prefix)]]
    # A prefix word ending in "/" matches a path below that folder.
    return all(h == p or (p.endswith("/") and h.startswith(p)) for h, p in zip(head, prefix))


def _classify(argv: list[str]) -> tuple[str, str]:
    if _starts(argv, MAIN):
        return "main", ""
    if _starts(argv, PREVIEW):
        return "preview", ""
    if _starts(argv, LANDMARKS):
        return "landmarks", ""
    if _starts(argv, LAUNCHER):
        return "launcher", ""
    if _starts(argv, TPU_POD):
        return "tpu_pod", ""
    for prefix, reason in NOT_RUN:
        if _starts(argv, prefix):
            return "not_run", reason
    return "unknown", "not recognised: add it to NOT_RUN with a reason, or run it here"


def parse_doc(doc: str) -> list[DocCommand]:
    text = (REPO / doc).read_text()
    out: list[DocCommand] = []
    for first, lines in _shell_blocks(text):
        base_line: list[str] | None = None  # first physical line of the last main command
        previous: list[str] | None = None
        env: dict[str, str] = {}
        for number, first_physical, joined in _logical_lines(first, lines):
            if joined.startswith("--"):
                # An alternative set of overrides for the block's last main command.
                assert base_line is not None, f"{doc}:{number}: '--' line without a command"
                argv = base_line + shlex.split(joined, comments=True)
                text_as_shown = " ".join(base_line) + " \\ " + joined
                out.append(_make(doc, number, text_as_shown, argv, env))
                continue
            for argv in _split(joined):
                while argv and _ASSIGNMENT.match(argv[0]):
                    name, _, value = argv.pop(0).partition("=")
                    env[name] = value
                if not argv:
                    continue
                if "--" in argv and argv[argv.index("--") + 1:] == ["..."]:
                    assert previous is not None, f"{doc}:{number}: '-- ...' with no command before"
                    argv = argv[:argv.index("--") + 1] + previous
                command = _make(doc, number, joined, argv, env)
                out.append(command)
                if command.kind in ("main", "launcher"):
                    previous = list(argv[argv.index("--") + 1:] if "--" in argv else argv)
                if command.kind == "main":
                    base_line = _first_line_argv(first_physical, argv)
    return out


def _first_line_argv(first_physical: str, argv: list[str]) -> list[str]:
    """The main command's words on its first physical line (``python -m unmask_jax.main
    --config=... --workdir=...``), i.e. without the override lines that follow it."""
    words = shlex.split(first_physical, comments=True)
    if "&&" in words:
        words = words[len(words) - words[::-1].index("&&"):]
    return words if _starts(words, MAIN) else list(argv)


def _make(doc, number, text, argv, env) -> DocCommand:
    if _PLACEHOLDER.search(" ".join(argv)):
        return DocCommand(doc, number, text, "synopsis", tuple(argv), tuple(env.items()),
                          "synopsis with <placeholders>, not a command")
    kind, reason = _classify(argv)
    return DocCommand(doc, number, text, kind, tuple(_unbracket(argv)), tuple(env.items()),
                      reason)


ALL_COMMANDS = [c for doc in DOCS for c in parse_doc(doc)]
RUNNABLE = ("main", "launcher", "preview", "landmarks", "tpu_pod")


def _unique(commands):
    seen, out = set(), []
    for c in commands:
        key = (c.kind, c.argv, c.env)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


RUN = _unique([c for c in ALL_COMMANDS if c.kind in RUNNABLE])


# ---------------------------------------------------------------------------------------
# Substitution: tiny data, paths under tmp_path, summary mode.
# ---------------------------------------------------------------------------------------


def _flag(argv, name):
    for a in argv:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _write_dataset(source: str, root: Path) -> Path:
    if root.exists():
        return root
    if "+" in source:  # several sources read as one: each in its folder under data_dir
        for part in source.split("+"):
            _write_dataset(part, root / part)
    elif source == "lfw":
        fixtures.write_lfw(root)
    elif source == "celeba":
        fixtures.write_celeba(root, identities=4, per_identity=2, with_landmarks=True)
    elif source == "folder":
        fixtures.write_folder(root)
    elif source == "paired":
        fixtures.write_paired(root, count=4)
    else:
        raise AssertionError(f"no tiny-data writer for source {source!r}")
    return root


def _substitute(argv: list[str], tmp_path: Path, summary: bool) -> list[str]:
    source = _flag(argv, "--config.data.source") or _flag(argv, "--source")
    out = []
    for a in argv:
        name, eq, value = a.partition("=")
        if eq and _DATA_VALUE.match(value):
            assert source, f"dataset path {value!r} in a command without a source: {argv}"
            a = f"{name}={_write_dataset(source, tmp_path / 'data' / source)}"
        elif eq and name in _OUTPUT_FLAGS:
            a = f"{name}={tmp_path / 'out' / name.lstrip('-') / Path(value).name}"
        elif eq and value in _FILL:
            a = f"{name}={_FILL[value]}"
        elif summary and name == "--mode":
            continue
        out.append(a)
    if summary:
        out.append("--mode=summary")
    if out and out[0] in ("python", "python3"):
        out[0] = sys.executable
    for a in out[1:]:
        value = a.partition("=")[2] or a
        outside = value.startswith("/") and not value.startswith(str(tmp_path))
        assert not (outside or re.match(r"(gs://|PATH|DIR$|OUT$)", value)), (
            f"{a!r} was not moved under tmp_path")
    return out


def _run(argv, tmp_path: Path, env_extra=(), timeout=300, cwd=REPO):
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["TMPDIR"] = str(tmp_path)          # launcher log folders, temp files
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    print("$", shlex.join(argv))
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    return result


def _report(result) -> str:
    return (f"exit {result.returncode}\n--- stdout (tail)\n{result.stdout[-3000:]}"
            f"\n--- stderr (tail)\n{result.stderr[-3000:]}")


# ---------------------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------------------


def test_every_documented_command_is_classified():
    for doc in DOCS:
        assert any(c.doc == doc and c.kind in RUNNABLE for c in ALL_COMMANDS), (
            f"no runnable command parsed from {doc}")
    assert any(c.kind == "main" for c in RUN), "no python -m unmask_jax.main command parsed"
    print("\nrun:")
    for c in RUN:
        print(f"  {c.doc}:{c.line} [{c.kind}] {shlex.join(c.argv)}")
    print("not run:")
    for c in ALL_COMMANDS:
        if c.kind not in RUNNABLE:
            print(f"  {c.doc}:{c.line} [{c.kind}] {shlex.join(c.argv)}  -- {c.reason}")
    unknown = [f"{c.doc}:{c.line}: {shlex.join(c.argv)}" for c in ALL_COMMANDS if c.kind == "unknown"]
    assert not unknown, "documented commands neither run nor listed in NOT_RUN:\n" + "\n".join(
        unknown)


def test_parser_on_a_sample():
    """The parsing rules on a block shaped like the docs' (no subprocess)."""
    sample = "\n".join([
        "```bash",
        "# comment",
        "pip install -e . && python -m unmask_jax.main --config=configs/ye.py:b --workdir=w \\",
        "    --config.data.source=lfw --config.data.data_dir=/data/lfw \\",
        "    --config.data.source_options.landmarks=dlib",
        "# other data:",
        "    --config.data.source=folder --config.data.data_dir=/data/faces",
        "python -m unmask_jax.main --config=configs/<system>.py --workdir=DIR",
        "python launch/local_multiprocess.py -n 2 -- python -m unmask_jax.main "
        "--config=configs/pix2pix.py:quick --workdir=/tmp/x",
        "python launch/local_multiprocess.py -n 2 --signal-after=30 -- ...",
        "python -m unmask_jax.main --config=c.py --workdir=DIR --mode=export [--export_pt]",
        "```",
    ])
    blocks = list(_shell_blocks(sample))
    assert len(blocks) == 1 and blocks[0][0] == 2
    commands = []
    for number, first_physical, joined in _logical_lines(*blocks[0]):
        commands.append((number, first_physical, joined))
    assert [n for n, _, _ in commands] == [3, 7, 8, 9, 10, 11]
    assert _split(commands[0][2])[0] == ["pip", "install", "-e", "."]
    assert _first_line_argv(commands[0][1], []) == [
        "python", "-m", "unmask_jax.main", "--config=configs/ye.py:b", "--workdir=w"]
    assert _classify(["python3", "benchmarks/train_step.py"])[0] == "not_run"
    assert _classify(["rm", "-rf", "/"])[0] == "unknown"
    assert _unbracket(["--mode=export", "[--export_pt]"]) == ["--mode=export", "--export_pt"]


def _id(command: DocCommand) -> str:
    return command.id


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in RUN if c.kind == "main"], ids=_id)
def test_documented_main_command(command, tmp_path):
    argv = _substitute(list(command.argv), tmp_path, summary=True)
    result = _run(argv, tmp_path)
    assert result.returncode == 0, f"{command.doc}:{command.line}: {command.text}\n" + _report(
        result)
    params = _PARAM_LINE.findall(result.stdout)
    assert params and all(int(n.replace(",", "")) > 0 for _, n in params), _report(result)
    if _flag(argv, "--workdir"):
        assert (Path(_flag(argv, "--workdir")) / "summary.json").is_file()
    else:  # weights (--weights, or the starter weights): summarised, and left as shipped
        weights = REPO / (_flag(argv, "--weights") or "weights/ganmasker_starter")
        assert (weights / "manifest.json").is_file() and not (weights / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in RUN if c.kind == "launcher"], ids=_id)
def test_documented_launcher_command(command, tmp_path):
    split = command.argv.index("--")
    launcher = _substitute(list(command.argv[:split]), tmp_path, summary=False)
    inner = list(command.argv[split + 1:])
    assert _starts(inner, MAIN), f"launcher runs something else: {inner}"
    argv = launcher + ["--"] + _substitute(inner, tmp_path, summary=True)
    result = _run(argv, tmp_path)
    assert result.returncode == 0, f"{command.doc}:{command.line}: {command.text}\n" + _report(
        result)
    assert "Traceback" not in result.stdout + result.stderr, _report(result)
    assert _PARAM_LINE.findall(result.stdout), _report(result)   # process 0's table, [p0]
    assert (Path(_flag(argv, "--workdir")) / "summary.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in RUN if c.kind in ("preview", "landmarks")],
                         ids=_id)
def test_documented_data_command(command, tmp_path):
    argv = _substitute(list(command.argv), tmp_path, summary=False)
    result = _run(argv, tmp_path)
    assert "Traceback" not in result.stderr, _report(result)
    assert result.returncode == 0, f"{command.doc}:{command.line}: {command.text}\n" + _report(
        result)
    if command.kind == "preview":
        out = Path(_flag(argv, "--out"))
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        data_dir = Path(_flag(argv, "--data_dir"))
        assert "done:" in result.stdout, _report(result)
        assert list(data_dir.glob("landmarks_*.npz")), "no landmark cache next to the data"


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in RUN if c.kind == "tpu_pod"], ids=_id)
def test_documented_tpu_pod_command_dry_run(command, tmp_path):
    env = dict(command.env)
    words = [re.sub(r"\$(\w+)|\$\{(\w+)\}",
                    lambda m: env.get(m.group(1) or m.group(2), m.group(0)), a)
             for a in command.argv]
    assert not any("$" in w for w in words), f"undefined shell variable in {command.text}"
    words = [w.replace("./", str(tmp_path) + "/", 1) if w.startswith("--fetch=./") else w
             for w in words]
    argv = ["bash", str(REPO / words[0])] + words[1:] + ["--dry-run"]
    result = _run(argv, tmp_path, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, f"{command.doc}:{command.line}: {command.text}\n" + _report(
        result)
    assert "+ gcloud " in result.stdout, _report(result)
