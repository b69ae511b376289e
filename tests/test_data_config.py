"""config.data <-> DataConfig: one home for the defaults, every source option settable from
the command line (absl/ml_collections flag parsing, as unmask_jax.main does it), unset
options not passed on, and the ``:quick`` variants working with every source. Tiny generated
data only."""
from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest
from absl import flags
from ml_collections import config_dict, config_flags

from configs import default, ye
from data_pipelines import pipeline
from data_pipelines.config import DataConfig
from data_pipelines.sources import OPTION_TYPES, SOURCES, source_options
from tests import fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]

#: A command-line value for each option type, and what it must parse to.
SAMPLES = {int: ("3", 3), float: ("0.25", 0.25), str: ("dlib", "dlib"),
           tuple: ("(0.3,0.4,0.7,0.8)", (0.3, 0.4, 0.7, 0.8))}


def parse_command_line(*overrides: str, config: str = "configs/ye.py:b_quick"):
    """The config as ``python -m unmask_jax.main --config=... <overrides>`` would see it."""
    path, variant = config.split(":")
    argv = ["prog", f"--config={REPO / path}:{variant}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


def test_config_data_is_built_from_dataconfig_defaults():
    c = default.get_config()
    data = c.data.to_dict()
    defaults = DataConfig.defaults()
    assert set(data) == set(defaults) == {f.name for f in dataclasses.fields(DataConfig)}
    for key, value in defaults.items():
        if key == "source_options":
            assert set(data[key]) == set(OPTION_TYPES)
            assert all(v is None for v in data[key].values())
        else:
            assert data[key] == value, key
    # The default config round-trips to the default DataConfig.
    assert DataConfig.from_dict(data) == DataConfig()


def test_option_types_cover_exactly_what_the_sources_accept():
    accepted = {opt for name in SOURCES for opt in source_options(name)}
    assert set(OPTION_TYPES) == accepted
    for name in SOURCES:  # every source takes num_records (quick variants)
        assert "num_records" in source_options(name), name


@pytest.mark.parametrize("option", sorted(OPTION_TYPES))
def test_every_source_option_is_settable_from_the_command_line(option):
    text, value = SAMPLES[OPTION_TYPES[option]]
    source = next(n for n in sorted(SOURCES) if option in source_options(n))
    c = parse_command_line(f"--config.data.source={source}",
                           f"--config.data.source_options.{option}={text}")
    cfg = DataConfig.from_dict(c.data.to_dict())
    got = cfg.source_options[option]
    assert got == value and type(got) is type(value)
    # Only the options that were set (plus quick's num_records) reach the source.
    assert set(cfg.source_options) == {option, "num_records"}


def test_readme_command_line_for_lfw_with_dlib_landmarks():
    c = parse_command_line("--config.data.source=lfw", "--config.data.data_dir=/data/lfw",
                           "--config.data.source_options.landmarks=dlib", config="configs/ye.py:b")
    cfg = DataConfig.from_dict(c.data.to_dict())
    assert cfg.source_options == {"landmarks": "dlib"} and cfg.data_dir == "/data/lfw"


def test_unknown_or_foreign_options_are_rejected_clearly():
    with pytest.raises((AttributeError, KeyError), match="nope"):
        parse_command_line("--config.data.source_options.nope=1")
    c = parse_command_line("--config.data.source_options.landmarks=dlib")  # synthetic
    with pytest.raises(ValueError, match=r"source_options: synthetic does not take landmarks"
                                         r".*accepts \['images_per_identity', 'num_records'\]"):
        DataConfig.from_dict(c.data.to_dict())
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nope'\]"):
        DataConfig.from_dict({"nope": 1})
    # A wrong type for a typed placeholder stops at parse time, naming the value.
    with pytest.raises(Exception, match="abc"):
        parse_command_line("--config.data.source_options.num_records=abc")


def test_none_valued_options_are_not_passed_to_the_source(monkeypatch):
    seen = {}
    real = pipeline.make_source

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(pipeline, "make_source", spy)
    c = default.get_config()
    c.data.resolution = 64
    c.data.source_options.num_records = 4
    cfg = DataConfig.from_dict(c.data.to_dict())
    pipeline.build_source(cfg, "train")
    assert {k for k in seen if k not in ("data_dir", "split", "seed", "resolution")} == {
        "num_records"}


def _quick_with(source: str, data_dir, **options):
    c = ye.get_config("b_quick")
    c.data.source = source
    c.data.data_dir = None if data_dir is None else str(data_dir)
    for key, value in options.items():
        c.data.source_options[key] = value
    return DataConfig.from_dict(c.data.to_dict())


def test_quick_variant_works_with_every_source(tmp_path):
    lfw = tmp_path / "lfw"
    fixtures.write_lfw(lfw, {f"P{k:02d}_Name": 2 for k in range(30)}, size=64)
    celeba = tmp_path / "celeba"
    fixtures.write_celeba(celeba, identities=3, per_identity=1)
    folder = tmp_path / "folder"
    fixtures.write_folder(folder)
    paired = tmp_path / "paired"
    fixtures.write_paired(paired, count=2)
    cases = {
        "synthetic": (None, {}),
        "lfw": (lfw, {"landmarks": "template"}),
        "celeba": (celeba, {"landmarks": "template"}),
        "folder": (folder, {"landmarks": "template"}),
        "paired": (paired, {}),
    }
    for source, (data_dir, options) in cases.items():
        cfg = _quick_with(source, data_dir, **options)
        assert cfg.source_options["num_records"] == 2000
        built = pipeline.build_source(cfg, "train")
        assert 0 < len(built) <= 2000, source
    # The cap keeps at most N records of a file source.
    small = _quick_with("lfw", lfw, landmarks="template", num_records=7)
    assert len(pipeline.build_source(small, "train")) == 7


def test_data_pipelines_imports_neither_configs_nor_unmask_jax():
    for path in (REPO / "data_pipelines").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("configs", "unmask_jax"), (path, name)


def test_placeholders_keep_their_types_after_a_plain_assignment():
    c = default.get_config()
    c.lock()
    c.data.source_options.landmarks = "dlib"  # used to be a KeyError on a locked config
    c.data.source_options.test_fraction = 1  # int -> float field is fine
    assert isinstance(c.data.source_options.test_fraction, float)
    with pytest.raises(TypeError):
        c.data.source_options.num_records = "many"
    assert isinstance(c.data.source_options, config_dict.ConfigDict)
