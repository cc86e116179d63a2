"""Gate, tag and merge under g++ against their Python models, on random exit sequences: no
sample is lost, duplicated, or reordered within its exit."""

import numpy as np
import pytest

from exitflow.hls_templates.routing import (
    TagFormat,
    gate_class_csim,
    gate_class_model,
    gate_csim,
    gate_model,
    merge_csim,
    merge_model,
)

FMT = TagFormat(id_bits=16, exit_bits=2, rec_bits=19)


def random_records(rng, n, exit_rate):
    flags = rng.random(n) < exit_rate
    payload = rng.integers(0, 1 << (FMT.rec_bits - 1), n)
    return [int(p) | (int(f) << (FMT.rec_bits - 1)) for p, f in zip(payload, flags, strict=False)]


@pytest.mark.parametrize("folds, exit_rate", [(1, 0.5), (7, 0.9), (16, 0.1), (3, 0.0), (3, 1.0)])
def test_gate_matches_its_model(tmp_path, folds, exit_rate):
    rng = np.random.default_rng(folds)
    n = 500
    ids = sorted(rng.choice(1 << 16, n, replace=False).tolist())  # what reached this stage, in order
    records = random_records(rng, n, exit_rate)
    fms = rng.integers(0, 1 << 12, (n, folds)).tolist()
    expected = gate_model(ids, records, fms, 1, FMT)
    got = gate_csim(ids, records, fms, 1, FMT, fm_bits=12, workdir=tmp_path, folds=folds)
    assert got == expected
    go_ids, go_fms, tagged = got
    out_ids, exits, recs = FMT.untag(tagged)
    assert sorted(go_ids + out_ids.tolist()) == ids  # nothing lost or duplicated
    assert go_ids == sorted(go_ids) and out_ids.tolist() == sorted(out_ids.tolist())  # order kept
    assert set(exits.tolist()) <= {1}
    assert all(FMT.leaves(r) for r in recs) and not any(FMT.leaves(records[ids.index(i)]) for i in go_ids)
    assert go_fms == [fms[ids.index(i)] for i in go_ids]  # feature maps travel with their samples


def test_tag_of_the_final_exit(tmp_path):
    rng = np.random.default_rng(1)
    ids = list(range(100, 300))
    records = random_records(rng, len(ids), 1.0)
    _, _, tagged = gate_csim(ids, records, [[]] * len(ids), 3, FMT, fm_bits=8, workdir=tmp_path, folds=0)
    out_ids, exits, recs = FMT.untag(tagged)
    assert out_ids.tolist() == ids and set(exits.tolist()) == {3} and recs.tolist() == records


@pytest.mark.parametrize("exits", [2, 3, 4])
def test_pipeline_routing_and_merge(tmp_path, exits):
    """Random exit decisions through a chain of gates, then the merge: every sample leaves once,
    at the first exit that takes it, and each exit's records keep their order."""
    rng = np.random.default_rng(exits)
    n, folds = 2000, 4
    ids = list(range(n))
    fms = rng.integers(0, 1 << 12, (n, folds)).tolist()
    streams = []
    for k in range(exits):
        last = k == exits - 1
        records = random_records(rng, len(ids), 1.0 if last else rng.uniform(0.2, 0.8))
        if last:
            _, _, tagged = gate_csim(ids, records, [[]] * len(ids), k, FMT, 12, tmp_path, folds=0)
            assert tagged == gate_model(ids, records, [[]] * len(ids), k, FMT)[2]
        else:
            ids, fms, tagged = gate_csim(ids, records, fms, k, FMT, 12, tmp_path, folds=folds)
        streams.append(tagged)
    merged = merge_csim(streams, FMT.width, tmp_path)
    assert merged == merge_model(streams)
    out_ids, exit_index, _ = FMT.untag(merged)
    assert sorted(out_ids.tolist()) == list(range(n))
    for k in range(exits):
        mine = out_ids[exit_index == k].tolist()
        assert mine == sorted(mine) and len(mine) == len(streams[k])


@pytest.mark.parametrize(
    "folds, exit_rate, class_lsb, class_bits",
    [(1, 0.5, 14, 4), (7, 0.9, 3, 7), (16, 0.1, 0, 1), (3, 0.0, 10, 8), (3, 1.0, 14, 4)],
)
def test_gate_class_matches_its_model(tmp_path, folds, exit_rate, class_lsb, class_bits):
    """The gate before an agreement head sends the class field of every record that goes on,
    in the order the samples go on; everything else is the plain gate's."""
    rng = np.random.default_rng(folds + class_bits)
    n = 500
    ids = sorted(rng.choice(1 << 16, n, replace=False).tolist())
    records = random_records(rng, n, exit_rate)
    fms = rng.integers(0, 1 << 12, (n, folds)).tolist()
    expected = gate_class_model(ids, records, fms, 1, FMT, class_lsb, class_bits)
    got = gate_class_csim(ids, records, fms, 1, FMT, 12, tmp_path, folds, class_lsb, class_bits)
    assert got == expected
    assert got[:3] == gate_csim(ids, records, fms, 1, FMT, fm_bits=12, workdir=tmp_path, folds=folds)
    go_ids, _, _, classes = got
    assert len(classes) == len(go_ids)
    mask = (1 << class_bits) - 1
    assert classes == [(records[ids.index(i)] >> class_lsb) & mask for i in go_ids]  # each with its sample
    assert exit_rate in (0.0, 1.0) or len(set(classes)) > 1
    with pytest.raises(ValueError, match="must lie below the exit flag"):
        gate_class_csim(ids, records, fms, 1, FMT, 12, tmp_path, folds, FMT.rec_bits - 2, 2)


def threshold_at(policy, codes, share, scale=0.25):
    """A threshold at which about ``share`` of ``codes`` pass the policy's test."""
    if policy == "margin":
        return (float(np.quantile(codes, 1 - share)) - 0.5) * scale
    return min(1.0, 1024.0 / float(np.quantile(codes, share)))  # max_prob's code: 2**10 / t


@pytest.mark.slow
@pytest.mark.parametrize("first_policy, classes", [("max_prob", 2), ("margin", 10), ("agreement", 100)])
def test_ctu_gate_ctu_with_agreement_is_the_route(tmp_path, first_policy, classes):
    """Two exits in C simulation: the first kept exit's CTU (any policy; agreement there is
    max_prob's unit), its gate sending the classes of the samples that go on, and an agreement
    CTU that reads them: every sample's exit, class and code is what policies.route and the
    policy function give."""
    from exitflow.hls_templates.ctu import CTUParams, csim
    from exitflow.quant import policies

    rng = np.random.default_rng(classes)
    n, bits = 1500, 8
    z = rng.integers(-6, 7, (n, 2, classes))  # close logits: ties, disagreements
    z[: n // 2, 1] = z[: n // 2, 0]  # half the same at both exits: they agree
    z[: n // 2, 1, 0] += 3
    _, own0 = policies.confidence_code(first_policy, z[:, 0], 0.25, bits)
    _, own1 = policies.confidence_code("agreement", z[:, 1], 0.25, bits)
    first = CTUParams(
        policy=first_policy,
        classes=classes,
        logit_bits=bits,
        scale=0.25,
        threshold=threshold_at(first_policy, own0, 0.3),
    )
    second = CTUParams(
        policy="agreement",
        classes=classes,
        logit_bits=bits,
        scale=0.25,
        threshold=threshold_at("agreement", own1, 0.6),
        class_input=True,
    )
    fmt = TagFormat(16, 2, first.record_bits)  # the gate reads its own head's records
    d0 = csim(first, z[:, 0], tmp_path)
    records = first.pack(d0).tolist()
    ids = list(range(n))
    go_ids, _, tagged, sent = gate_class_csim(
        ids, records, [[i] for i in ids], 0, fmt, 16, tmp_path, 1, first.code_bits, first.class_bits
    )
    d1 = csim(second, z[go_ids, 1], tmp_path, np.array(sent))
    exit_of, cls, code = np.full(n, 2), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    out_ids, _, recs = fmt.untag(tagged)
    left = first.unpack(np.array([int(r) for r in recs], dtype=np.int64))
    exit_of[out_ids], cls[out_ids], code[out_ids] = 0, left.cls, left.code
    go = np.array(go_ids)
    exit_of[go[d1.exit]], cls[go[d1.exit]], code[go[d1.exit]] = 1, d1.cls[d1.exit], d1.code[d1.exit]
    # the policy function: codes and classes of both exits (the final one's column is never read)
    c0, k0 = policies.confidence_code(first_policy, z[:, 0], 0.25, bits)
    c1, k1 = policies.confidence_code("agreement", z[:, 1], 0.25, bits)
    constants = [first.threshold_constant, second.threshold_constant]
    final = np.zeros(n, dtype=np.int64)
    taken = policies.route(
        [first_policy, "agreement"],
        np.stack([k0, k1, final], 1),
        constants,
        np.stack([c0, c1, final], 1),
    )
    assert np.array_equal(np.minimum(exit_of, 2), taken)
    for k, (c, k_code) in enumerate(((c0, k0), (c1, k1))):
        assert np.array_equal(cls[taken == k], c[taken == k]) and np.array_equal(code[taken == k], k_code[taken == k])
    assert np.array_equal(np.array(sent), c0[go]) and np.array_equal(d1.cls, c1[go])
    assert set(taken.tolist()) == {0, 1, 2}  # all three exits are taken
    # some samples pass the second threshold but disagree with the first exit's class, and stay
    assert ((d1.code <= second.threshold_constant) & (d1.cls != np.array(sent))).any()
