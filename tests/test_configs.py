"""Every config file: its variants are parsed one way (``configs.default.variant``), each
listed variant builds, an empty one is the file's default, and an unknown one is one
message naming the file and its choices."""
from __future__ import annotations

import importlib

import pytest

FILES = {"pix2pix": "", "masked_gan": "", "ye": "a", "ganmasker": "unmask", "unveilify": "ref"}


@pytest.mark.parametrize("name", sorted(FILES))
def test_variants_build_and_unknown_ones_name_the_choices(name):
    mod = importlib.import_module(f"configs.{name}")
    built = {v: mod.get_config(v) for v in mod.VARIANTS}
    assert len({c.name for c in built.values()}) == len(mod.VARIANTS)  # each its own
    assert mod.get_config("").name == built[FILES[name]].name
    with pytest.raises(ValueError) as e:
        mod.get_config("nope")
    assert str(e.value) == (f"configs/{name}.py: unknown variant 'nope'; choose one of "
                            + ", ".join(repr(v) for v in mod.VARIANTS))
