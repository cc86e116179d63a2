"""The cheapest legal folding per target interval, against brute force."""

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from exitflow.dse.finn_model import inventory
from exitflow.dse.folding import FoldingTable, legal_foldings
from exitflow.hw.build import build


@pytest.fixture(scope="module")
def lenet_layers(digits_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "design.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "lenet",
                "board": "Pynq-Z2",
                "stages": [{"name": "all", "blocks": ["conv0", "conv1", "fc0", "fc1"], "head": {"name": "final"}}],
            }
        )
    )
    build(digits_run, path, log=lambda line: None)
    folder = digits_run / "hw" / "all"
    names = list(json.loads((folder / "layers.json").read_text())["layers"])
    return inventory(folder / "model_hw.onnx", "xc7z020clg400-1", names).layers


BUDGET = np.array([53200, 280, 0, 220], dtype=float)


def test_legal_foldings_follow_finns_rules(lenet_layers):
    for layer in lenet_layers:
        pe, simd = legal_foldings(layer)
        assert len(pe) > 1
        assert np.all(layer.mh % pe == 0) and np.all(layer.mw % simd == 0)
        assert np.all(simd * 1024 >= layer.mw) and np.all(pe * simd * layer.wbits <= 8191)
        if layer.window:  # the generator takes its own SIMD: the MVAU's need not divide the channels
            assert np.any((layer.window["ifm_ch"] % simd != 0) | (simd > layer.window["ifm_ch"]))


def test_cheapest_meets_the_target_and_nothing_cheaper_does(lenet_layers):
    for layer in lenet_layers:
        table = FoldingTable.build(layer, BUDGET)
        targets = np.unique(np.concatenate([table.cycles, table.cycles - 1, [0, 1e12]]))
        assert len(table.costs) > 1  # several cost weightings, each with its own envelope
        for w, cost in enumerate(table.costs):
            chosen = table.cheapest(targets, w)
            fast = table.envelope(targets)[w]
            assert np.array_equal(cost[np.maximum(fast, 0)] * (fast >= 0), cost[np.maximum(chosen, 0)] * (chosen >= 0))
            assert np.array_equal(fast >= 0, chosen >= 0)
            for t, i in zip(targets, chosen, strict=False):
                fits = np.flatnonzero(table.cycles <= t)
                assert (i == -1) == (fits.size == 0)
                if fits.size:
                    assert table.cycles[i] <= t
                    assert cost[i] == cost[fits].min()
            # a looser target is never more expensive
            picked = [cost[i] for i in chosen if i >= 0]
            assert all(a >= b - 1e-12 for a, b in zip(picked, picked[1:], strict=False))
        assert np.all(table.resources[:, 2] == 0)  # no URAM on a Zynq-7020


def test_unavailable_resource_is_never_chosen():
    from exitflow.dse.finn_model import WeightLayer

    layer = WeightLayer(
        layer="fc",
        node="MVAU_hls_0",
        impl="hls",
        mw=64,
        mh=16,
        wbits=4,
        abits=4,
        signed_input=False,
        acc_bits=14,
        out_bits=4,
        no_activation=False,
        mem_mode="internal_decoupled",
        ram_style="auto",
        ram_style_thresholds="auto",
        res_type="dsp",
        vectors=1,
        th=1,
        dsp_block="DSP48E1",
    )
    no_dsp = FoldingTable.build(layer, np.array([53200, 280, 0, 0], dtype=float))
    assert np.all(np.isinf(no_dsp.costs[:, no_dsp.resources[:, 3] > 0]))
    # an HLS MVAU may multiply in LUTs instead: the board without DSPs gets those foldings
    picked = no_dsp.envelope(np.array([1e9]))
    assert np.all(picked >= 0) and set(no_dsp.res_type[picked.ravel()]) == {"lut"}
    rtl = FoldingTable.build(replace(layer, impl="rtl"), np.array([53200, 280, 0, 0], dtype=float))
    assert np.all(rtl.envelope(np.array([1e9])) == -1)  # every folding of an RTL MVAU needs DSPs


def test_wide_operands_multiply_in_dsp_slices_when_luts_are_dear():
    """An 8-bit input layer: a DSP slice saves 33 LUTs per multiplier; the weighting with DSP
    slices at an eighth of their budget share takes them, the even one keeps LUT multipliers."""
    from exitflow.dse.finn_model import WeightLayer
    from exitflow.dse.folding import WEIGHTINGS

    layer = WeightLayer(
        layer="conv0",
        node="MVAU_hls_0",
        impl="hls",
        mw=27,
        mh=64,
        wbits=2,
        abits=8,
        signed_input=False,
        acc_bits=16,
        out_bits=2,
        no_activation=False,
        mem_mode="internal_decoupled",
        ram_style="auto",
        ram_style_thresholds="block",
        res_type="lut",
        vectors=900,
        th=1,
        dsp_block="DSP48E1",
    )
    table = FoldingTable.build(layer, np.array([41820, 234.6, 0, 187], dtype=float))
    both = np.flatnonzero((table.pe == 64) & (table.simd == 1) & (table.ram_style == "distributed"))
    lut, dsp = sorted(both, key=lambda i: table.res_type[i] == "dsp")
    assert table.resources[dsp, 3] == 64 and table.resources[lut, 3] == 0
    # FINN's HLS estimate: 30 LUTs per 8x2-bit multiplier, times 1.1, less in DSP mode (floors: +-1)
    assert abs(table.resources[lut, 0] - table.resources[dsp, 0] - 1.1 * 64 * 30) <= 1
    picks = table.envelope(np.array([24300.0]))[:, 0]
    assert table.res_type[picks[WEIGHTINGS.index((1.0, 1.0, 1.0, 0.125))]] == "dsp"
    assert table.res_type[picks[WEIGHTINGS.index((1.0, 1.0, 1.0, 1.0))]] == "lut"
