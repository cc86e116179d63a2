"""Multi-exit networks: backbones, exit heads with integer logits, and config errors."""

import numpy as np
import pytest
import torch

from exitflow.core.errors import ConfigError
from exitflow.core.schema import FrozenMap, from_data
from exitflow.quant.config import BitsOverride, ModelConfig
from exitflow.quant.network import build_model


@pytest.mark.parametrize(
    "backbone, shape, blocks",
    [
        ("lenet", (1, 28, 28), ["conv0", "conv1", "fc0", "fc1"]),
        ("lenet", (1, 8, 8), ["conv0", "conv1", "fc0", "fc1"]),
        ("cnv", (3, 32, 32), ["conv0", "conv1", "conv2", "conv3", "conv4", "conv5", "fc0", "fc1"]),
        ("resnet8", (3, 32, 32), ["stem", "stack1", "stack2", "stack3"]),
        ("mobilenet", (3, 32, 32), ["stem", "sep1", "sep2", "sep3", "sep4", "sep5", "sep6"]),
    ],
)
def test_every_exit_gives_integer_logits_with_one_scale(backbone, shape, blocks):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, width=0.25 if backbone == "cnv" else 1.0), shape, 10).eval()
    assert model.block_names == blocks
    assert model.exit_names == blocks  # default: a candidate exit after every block
    with torch.no_grad():
        outs = model(torch.rand(3, *shape))
    assert len(outs) == len(blocks)
    for out in outs:
        assert out.shape == (3, 10)
        assert out.scale.numel() == 1  # one per-tensor scale per head
        ints = out.int()
        assert ints.dtype in (torch.int32, torch.int64)
        ratio = (out.value / out.scale).double()
        assert torch.equal(ints.double(), torch.round(ratio))  # value = integer x scale
        assert (ratio - torch.round(ratio)).abs().max() < 1e-2


def test_cnv_topology_matches_finn_cnv():
    model = build_model(ModelConfig(backbone="cnv"), (3, 32, 32), 10)
    convs = [m for m in model.blocks.modules() if m.__class__.__name__ == "QuantConv2d"]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 64, (3, 3)),
        (64, 64, (3, 3)),
        (64, 128, (3, 3)),
        (128, 128, (3, 3)),
        (128, 256, (3, 3)),
        (256, 256, (3, 3)),
    ]
    assert model.shapes["conv5"] == (256, 1, 1)
    linears = [m for m in model.modules() if m.__class__.__name__ == "QuantLinear"]
    final = model.heads["fc1"].classifier
    assert [(m.in_features, m.out_features) for m in linears if m in list(model.blocks.modules())] == [
        (256, 512),
        (512, 512),
    ]
    assert (final.in_features, final.out_features) == (512, 10)


def test_chosen_exits_and_bit_overrides():
    config = ModelConfig(exits=("conv1",), preset="w2a2", block_bits=FrozenMap({"fc0": BitsOverride(weight=4)}))
    model = build_model(config, (1, 28, 28), 10)
    assert model.exit_names == ["conv1", "fc1"]
    assert model.blocks["fc0"].linear.quant_weight().bit_width.item() == 4
    assert model.blocks["conv0"].conv.quant_weight().bit_width.item() == 2
    assert model.blocks["conv0"].act.act_quant.bit_width().item() == 2


def test_w1a1_is_binary():
    model = build_model(ModelConfig(preset="w1a1"), (1, 28, 28), 10).eval()
    w = model.blocks["conv0"].conv.quant_weight().int()
    assert set(torch.unique(w).tolist()) <= {-1, 1}
    with torch.no_grad():
        h = model.blocks["conv0"](model.input_quant(torch.rand(2, 1, 28, 28)))
    assert set(torch.unique(h.value / h.scale).tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize(
    "data, shape, message",
    [
        (
            {"exits": ["conv9"]},
            (1, 28, 28),
            "model.exits: no block named 'conv9' in lenet; blocks: conv0, conv1, fc0, fc1",
        ),
        ({"block_bits": {"fc7": {"act": 2}}}, (1, 28, 28), "model.block_bits: no block named 'fc7'"),
        (
            {"backbone": "cnv"},
            (1, 28, 28),
            "cnv takes 3x32x32 images but the data is 1x28x28; set data.shape: [3, 32, 32]",
        ),
        ({}, (1, 4, 4), "a 3x3 kernel does not fit"),
        (
            {"backbone": "resnet8"},
            (1, 28, 28),
            "resnet8 takes 3-channel images of 8x8 or more but the data is 1x28x28; set data.shape: [3, 32, 32]",
        ),
        (
            {"backbone": "mobilenet", "preset": "w1a1"},
            (3, 32, 32),
            "mobilenet has residual or depthwise blocks, which need activations of 2 bits or more; choose w2a2",
        ),
        (
            {"backbone": "resnet8", "block_bits": {"stack2": {"act": 1}}},
            (3, 32, 32),
            "need activations of 2 bits or more",
        ),
    ],
)
def test_model_that_does_not_fit(data, shape, message):
    with pytest.raises(ConfigError) as err:
        build_model(from_data(ModelConfig, data), shape, 10)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"preset": "w3a3"}, "preset: must be one of 'w1a1', 'w2a2', 'w4a4', 'w8a8'; got 'w3a3'"),
        (
            {"block_bits": {"conv0": {"weight": 16}}},
            "block_bits.conv0.weight: unsupported bit width 16; supported: 1, 2",
        ),
        ({"backbone": "resnet"}, "backbone: must be one of 'lenet', 'cnv', 'resnet8', 'mobilenet', 'custom'"),
        ({"exits": ["conv0", "conv0"]}, "exits: names a block twice"),
        ({"head": {"pool_to": 0}}, "head.pool_to: must be >= 1"),
    ],
)
def test_model_config_errors(data, message):
    with pytest.raises(ConfigError) as err:
        from_data(ModelConfig, data, source="run.yaml")
    assert message in str(err.value)


def test_stage_modules_cover_the_backbone_once():
    model = build_model(ModelConfig(), (1, 28, 28), 10).eval()
    pairs = model.stage_modules(["conv0", "fc0"])
    assert len(pairs) == 3
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        full = model(x)
        h = x
        for (stage, head), k in zip(pairs, [0, 2, 3], strict=False):
            h = stage(h).value
            assert np.array_equal(head(h).int().numpy(), full[k].int().numpy())
    with pytest.raises(ValueError, match="no exit head after block 'conv9'"):
        model.stage_modules(["conv9"])


def test_resnet8_is_mlperf_tinys_topology_with_one_quantiser_per_add():
    from brevitas.nn import QuantConv2d

    model = build_model(ModelConfig(backbone="resnet8"), (3, 32, 32), 10)
    convs = [(n, m) for n, m in model.blocks.named_modules() if isinstance(m, QuantConv2d)]
    assert [(n, m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for n, m in convs] == [
        ("stem.conv", 3, 16, 3, 1),
        ("stack1.conv1", 16, 16, 3, 1),
        ("stack1.conv2", 16, 16, 3, 1),
        ("stack2.conv1", 16, 32, 3, 2),
        ("stack2.conv2", 32, 32, 3, 1),
        ("stack2.proj", 16, 32, 1, 2),
        ("stack3.conv1", 32, 64, 3, 2),
        ("stack3.conv2", 64, 64, 3, 1),
        ("stack3.proj", 32, 64, 1, 2),
    ]
    assert model.shapes == {"stem": (16, 32, 32), "stack1": (16, 32, 32), "stack2": (32, 16, 16), "stack3": (64, 8, 8)}
    final = model.heads["stack3"]
    assert [type(m).__name__ for m in final] == ["AdaptiveAvgPool2d", "Flatten", "QuantLinear"]
    # the add's two inputs carry one scale: the shared quantiser's
    block = model.blocks["stack2"].eval()
    seen = []
    block.add_quant.register_forward_hook(lambda m, i, o: seen.append(float(o.scale)))
    with torch.no_grad():
        block(model.blocks["stem"](model.input_quant(torch.rand(2, 3, 32, 32))))
    assert len(seen) == 2 and seen[0] == seen[1]


def test_mobilenet_blocks_are_depthwise_then_pointwise():
    from brevitas.nn import QuantConv2d

    model = build_model(ModelConfig(backbone="mobilenet", width=0.5), (3, 32, 32), 10)
    sep2 = [(n, m) for n, m in model.blocks["sep2"].named_modules() if isinstance(m, QuantConv2d)]
    assert [(n, m.groups, m.in_channels, m.out_channels, m.stride[0]) for n, m in sep2] == [
        ("dw", 8, 8, 8, 2),
        ("pw", 1, 8, 16, 1),
    ]
    assert model.shapes["sep6"] == (64, 4, 4)
    names = [[n for n, m in stage if isinstance(m, QuantConv2d)] for stage in model.stage_layers(["sep1", "sep6"])]
    assert names == [
        ["stem", "sep1.dw", "sep1.pw"],
        ["sep2.dw", "sep2.pw", "sep3.dw", "sep3.pw", "sep4.dw", "sep4.pw", "sep5.dw", "sep5.pw", "sep6.dw", "sep6.pw"],
    ]
