"""Gate, tag and merge under g++ against their Python models, on random exit sequences: no
sample is lost, duplicated, or reordered within its exit."""

import numpy as np
import pytest

from exitflow.hls_templates.routing import TagFormat, gate_csim, gate_model, merge_csim, merge_model

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
