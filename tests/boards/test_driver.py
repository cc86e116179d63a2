"""The PYNQ driver's decoding and reordering, without a board; the board run is marked."""

import json
import os

import numpy as np
import pytest

from exitflow.boards.driver import DriverError, RecordFormat, decode, pack_images, reorder
from exitflow.hls_templates.ctu import CTUParams
from exitflow.hls_templates.routing import TagFormat

FMT = RecordFormat(id_bits=16, exit_bits=2, class_bits=4, code_bits=(14, 14, 14))


def hardware_words(ids, exits, classes, codes):
    """Words as the CTU and the gates assemble them (their own Python models)."""
    ctu = CTUParams(policy="max_prob", classes=10, logit_bits=8, scale=0.05, threshold=0.9)
    assert (ctu.class_bits, ctu.code_bits) == (FMT.class_bits, FMT.code_bits[0])
    from exitflow.quant.policies import Decision

    records = ctu.pack(Decision(exit=np.ones(len(ids), bool), cls=np.asarray(classes), code=np.asarray(codes)))
    tag = TagFormat(FMT.id_bits, FMT.exit_bits, FMT.record_bits)
    return np.array(
        [int(tag.tag([i], e, [r])[0]) for i, e, r in zip(ids, exits, records, strict=False)], dtype=np.uint64
    )


def test_decode_then_reorder_restores_sample_order():
    rng = np.random.default_rng(0)
    n = 1000
    classes, exits, codes = rng.integers(0, 10, n), rng.integers(0, 3, n), rng.integers(0, 1 << 14, n)
    arrival = rng.permutation(n)  # out of order, as the merge delivers them
    words = hardware_words(arrival, exits[arrival], classes[arrival], codes[arrival])
    ids, ex, cl, co, flags = decode(words, FMT)
    assert ids.tolist() == arrival.tolist() and flags.all()
    result = reorder(words, FMT, n)
    assert np.array_equal(result.classes, classes) and np.array_equal(result.exits, exits)
    assert np.array_equal(result.codes, codes)
    assert result.exit_fractions(3).sum() == pytest.approx(1.0)


def test_ids_wrap_around_between_batches():
    ids = (np.arange(10) + 65530) % 65536
    words = hardware_words(ids[::-1], [0] * 10, list(range(10))[::-1], [5] * 10)
    assert reorder(words, FMT, 10, first_id=65530).classes.tolist() == list(range(10))


@pytest.mark.parametrize(
    "ids, message",
    [
        ([0, 1, 1, 3], "sample 2 is missing"),
        ([0, 1, 2], "expected 4 records, got 3"),
        ([0, 1, 2, 9], "record id 9 is not in this batch"),
    ],
)
def test_lost_or_duplicated_samples_are_reported(ids, message):
    words = hardware_words(ids, [0] * len(ids), [1] * len(ids), [0] * len(ids))
    with pytest.raises(DriverError, match=message):
        reorder(words, FMT, 4)


def test_pack_images_is_nhwc():
    images = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    assert pack_images(images)[:6].tolist() == [0, 4, 8, 1, 5, 9]
    with pytest.raises(ValueError, match="uint8 N x C x H x W"):
        pack_images(images.astype(np.float32))


def test_record_format_from_driver_json(tmp_path):
    (tmp_path / "driver.json").write_text(
        json.dumps({"records": {"id_bits": 16, "exit_bits": 2, "class_bits": 4, "code_bits": [14, 14, 14]}})
    )
    fmt = RecordFormat.load(tmp_path / "driver.json")
    assert fmt == FMT and fmt.width == 37 and fmt.word_bytes == 8


def test_exits_with_different_code_widths():
    """A margin CTU on 17-bit logits has an 18-bit code, a max_prob one 14 bits: the exit index
    selects the layout."""
    fmt = RecordFormat(16, 1, 4, (14, 18))
    tag = TagFormat(16, 1, fmt.record_bits)
    words = [
        int(tag.tag([0], 0, [(1 << 18) | (7 << 14) | 1234])[0]),
        int(tag.tag([1], 1, [(1 << 22) | (3 << 18) | 200000])[0]),
    ]
    result = reorder(np.array(words, dtype=np.uint64), fmt, 2)
    assert (
        result.classes.tolist() == [7, 3]
        and result.codes.tolist() == [1234, 200000]
        and result.exits.tolist() == [0, 1]
    )
    with pytest.raises(DriverError, match="names exit 1; the design has 1"):
        decode(np.array(words, dtype=np.uint64), RecordFormat(16, 1, 4, (14,)))


@pytest.mark.board
def test_accelerator_on_the_board():
    """Runs on the PYNQ board itself, with the bitfile of `exitflow build` in $EXITFLOW_BITFILE."""
    from exitflow.boards.driver import ExitflowAccelerator

    bitfile = os.environ["EXITFLOW_BITFILE"]
    acc = ExitflowAccelerator(bitfile, os.path.join(os.path.dirname(bitfile), "driver.json"))
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 28, 28), dtype=np.uint8)
    result = acc.run(images)
    assert len(result.classes) == 64 and result.exits.max() < 4


def test_a_register_cell_is_found_in_the_overlays_address_map():
    from exitflow.boards.driver import address_range

    ranges = {"dma": {"phys_addr": 1}, "exit0": {"phys_addr": 2}, "exit1/s_axi_control_0": {"phys_addr": 3}}
    assert address_range(ranges, "exit0")["phys_addr"] == 2
    assert address_range(ranges, "exit1")["phys_addr"] == 3
    with pytest.raises(DriverError, match="no address range.*cell exit2.*known: dma, exit0"):
        address_range(ranges, "exit2")
