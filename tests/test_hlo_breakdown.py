"""unmask_jax.hlo_breakdown: the per-op account of a compiled program (--breakdown)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from unmask_jax import hlo_breakdown as hb

# A hand-written optimised module: a fused forward conv, its weight gradient (a plain
# convolution in the entry), a reduction whose scalar computation must not be counted, and
# free ops (parameters, tuple, get-tuple-element, bitcast).
MODULE = """HloModule jit_step, entry_computation_layout={(f32[2,8,8,3]{3,2,1,0})->f32[]}

%add.clone (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.1 = f32[] add(%x, %y)
}

%fused_conv (p0: f32[2,8,8,3], p1: f32[3,3,3,16]) -> f32[2,8,8,16] {
  %p0 = f32[2,8,8,3]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,3,16]{3,2,1,0} parameter(1)
  %conv.1 = f32[2,8,8,16]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  ROOT %max.1 = f32[2,8,8,16]{3,2,1,0} maximum(%conv.1, %conv.1)
}

ENTRY %main (param.0: f32[2,8,8,3], param.1: f32[3,3,3,16]) -> (f32[], f32[3,3,3,16]) {
  %param.0 = f32[2,8,8,3]{3,2,1,0} parameter(0), metadata={op_name="x"}
  %param.1 = f32[3,3,3,16]{3,2,1,0} parameter(1), metadata={op_name="w"}
  %fusion.1 = f32[2,8,8,16]{3,2,1,0} fusion(%param.0, %param.1), kind=kOutput, calls=%fused_conv, metadata={op_name="jit(step)/jvp(Net)/conv1/conv_general_dilated" stack_frame_id=3}, backend_config={"estimated_cycles":"1200"}
  %constant.0 = f32[] constant(0)
  %reduce.1 = f32[] reduce(%fusion.1, %constant.0), dimensions={0,1,2,3}, to_apply=%add.clone, metadata={op_name="jit(step)/jvp(Net)/reduce_sum"}
  %bitcast.1 = f32[2,8,8,16]{3,2,1,0} bitcast(%fusion.1)
  %conv.2 = f32[3,3,3,16]{3,2,1,0} convolution(%param.0, %bitcast.1), window={size=8x8 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf, metadata={op_name="jit(step)/transpose(jvp(Net))/conv1/conv_general_dilated"}
  %slice.1 = f32[1,8,8,16]{3,2,1,0} slice(%fusion.1), slice={[0:1], [0:8], [0:8], [0:16]}
  %copy.9 = f32[3,3,3,16]{3,2,1,0:S(1)} copy(%param.1)
  %conv.3 = f32[2,16,16,3]{3,2,1,0} convolution(%fusion.1, %param.1), window={size=3x3 pad=1_2x1_2 lhs_dilate=2x2}, dim_labels=b01f_01oi->b01f
  ROOT %tuple.1 = (f32[], f32[3,3,3,16]{3,2,1,0}) tuple(%reduce.1, %conv.2)
}
"""


def test_tiled_layouts_pad_the_two_most_minor_dimensions():
    # channels-minor bf16 image: 3 channels take 128 lanes, 256 columns are a multiple of 8.
    assert hb.type_bytes("bf16[8,256,256,3]{3,2,1,0:T(8,128)(2,1)}") == 8 * 256 * 256 * 128 * 2
    # minor-to-major {1,0}: dim 1 is padded to 128, dim 0 to 8.
    assert hb.type_bytes("f32[5,100]{1,0:T(8,128)}") == 8 * 128 * 4
    assert hb.type_bytes("f32[5,100]{0,1:T(8,128)}") == 128 * 104 * 4
    assert hb.type_bytes("f32[16]{0:T(128)}") == 128 * 4
    assert hb.type_bytes("f32[5,100]{1,0}") == 500 * 4           # no tiles: no padding
    assert hb.type_bytes("(f32[2]{0}, bf16[4]{0})") == 8 + 8     # a tuple: its arrays


def test_ops_of_a_module_with_their_bytes_flops_and_layers():
    ops = {o.name: o for o in hb.ops(MODULE)}
    # Free ops, the fused computation's own instructions and the reduction's scalar
    # computation are not ops of their own.
    assert set(ops) == {"fusion.1", "reduce.1", "conv.2", "slice.1", "conv.3", "copy.9"}
    # A copy into on-chip memory (S(1)): HBM is only read.
    assert ops["copy.9"].bytes == 2 * 4 * 432 and ops["copy.9"].hbm_bytes == 4 * 432
    assert ops["fusion.1"].hbm_bytes == ops["fusion.1"].bytes
    assert ops["slice.1"].bytes == 2 * 4 * 8 * 8 * 16                 # reads what it writes
    # A transposed convolution (dilated input): a quarter of the taps meet data.
    assert ops["conv.3"].flops == 2 * (2 * 16 * 16 * 3) * (3 * 3 * 16) // 4
    fwd = ops["fusion.1"]
    assert fwd.flops == 2 * (2 * 8 * 8 * 16) * (3 * 3 * 3)          # 2 x out x (k*k*cin)
    assert fwd.bytes == 4 * (2 * 8 * 8 * 3 + 3 * 3 * 3 * 16 + 2 * 8 * 8 * 16)
    assert fwd.layer == "Net/conv1/conv_general_dilated" and fwd.cycles == 1200
    grad = ops["conv.2"]
    # The weight gradient sums over batch x output pixels for each of its elements.
    assert grad.flops == 2 * (3 * 3 * 3 * 16) * (2 * 8 * 8)
    assert grad.layer == "bwd Net/conv1/conv_general_dilated" and grad.cycles is None
    assert ops["reduce.1"].flops == 0


def test_account_groups_by_layer_and_compares_with_xla_totals():
    b = hb.account(MODULE, top=2, total_bytes=1e4, total_flops=5e4)
    assert b["ops"] == 6 and len(b["top_ops_by_bytes"]) == 2
    assert b["hbm_bytes"] == b["bytes"] - 4 * 432
    assert [o["name"] for o in b["top_ops_by_bytes"]] == ["conv.3", "fusion.1"]  # by bytes
    assert b["flops"] == sum(o.flops for o in hb.ops(MODULE))
    layers = {g["layer"]: g for g in hb.account(MODULE)["top_layers_by_bytes"]}
    assert set(layers) == {"Net/conv1", "bwd Net/conv1", "Net", "(slice)", "(convolution)",
                           "(copy)"}
    text = "\n".join(hb.markdown(b, "train_step"))
    assert "| `Net/conv1` |" in text and "XLA's totals" in text


@pytest.mark.parametrize("op_name, layer", [
    ("jit(train_step)/transpose(jvp(MaskRemover))/generator/jit(_pad)/pad",
     "bwd MaskRemover/generator/pad"),
    ("jit(train_step)/jvp(Pix2Pix)/generator/down1/conv/conv_general_dilated",
     "Pix2Pix/generator/down1/conv/conv_general_dilated"),
    ("p['params']['conv']['kernel']", "p['params']['conv']['kernel']"),
])
def test_layer_names(op_name, layer):
    assert hb.short_layer(op_name) == layer


def test_a_compiled_program_is_accounted_against_an_analytic_count():
    """A real program compiled here: its convolution FLOPs are the analytic count, and the
    bytes are of the order of XLA's own total."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
            return nn.Conv(3, (3, 3), name="conv2")(x)

    net = Net()
    x = jnp.zeros((2, 16, 16, 3))
    params = net.init(jax.random.PRNGKey(0), x)
    compiled = jax.jit(lambda p, x: net.apply(p, x)).lower(params, x).compile()
    b = hb.account(compiled.as_text())
    assert b["flops"] == 2 * 2 * 16 * 16 * (16 * 27 + 3 * 144)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert 0.5 < b["bytes"] / cost["bytes accessed"] < 2.0
    assert {g["layer"] for g in b["top_layers_by_bytes"]} >= {"Net/conv1", "Net/conv2"}
