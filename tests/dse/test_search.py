"""The joint search on a synthetic problem whose answer can be checked by hand, and the front."""

import itertools

import numpy as np
import pytest

from exitflow.dse.finn_model import WeightLayer
from exitflow.dse.folding import FoldingTable
from exitflow.dse.search import Candidate, GraphCost, SearchSpace, Segment, ValidationProfile, pareto, search

BUDGET = np.array([20000, 100, 0, 50], dtype=float)


def layer(name, mw, mh):
    return WeightLayer(
        layer=name,
        node=f"MVAU_{name}",
        impl="hls",
        mw=mw,
        mh=mh,
        wbits=2,
        abits=2,
        signed_input=False,
        acc_bits=16,
        out_bits=2,
        no_activation=False,
        mem_mode="internal_decoupled",
        ram_style="auto",
        ram_style_thresholds="auto",
        res_type="lut",
        vectors=64,
        th=1,
        dsp_block="DSP48E1",
    )


def graph(name, layers, fixed_cycles=0.0, budget=BUDGET):
    return GraphCost(
        name, tuple(FoldingTable.build(layer, budget) for layer in layers), np.array([100.0, 0, 0, 0]), fixed_cycles
    )


def problem(budget=BUDGET):
    segments = [
        Segment(
            "e0",
            ("b0",),
            graph("s0", [layer("b0", 64, 32)], budget=budget),
            graph("h0", [layer("h0c", 64, 10)], budget=budget),
        ),
        Segment(
            "e1",
            ("b1",),
            graph("s1", [layer("b1", 256, 64)], budget=budget),
            graph("h1", [layer("h1c", 128, 10)], budget=budget),
        ),
    ]
    rng = np.random.default_rng(0)
    n = 400
    codes = np.stack([rng.integers(1024, 4096, n), rng.integers(1024, 4096, n)], axis=1)  # max_prob codes
    correct = np.stack([rng.random(n) < 0.9, rng.random(n) < 0.97], axis=1)
    return segments, codes, correct, np.array([0.1, 0.1])


def test_no_exit_and_early_exit_candidates():
    segments, codes, correct, scales = problem()
    found = search(
        segments,
        ValidationProfile(codes, correct, scales),
        SearchSpace("max_prob", [0.5, 0.9], BUDGET, clock_mhz=100.0),
    )
    no_exit = [c for c in found if c.exits == ()]
    early = [c for c in found if c.exits == (0,)]
    assert no_exit and early
    assert {c.accuracy for c in no_exit} == {correct[:, 1].mean()}
    for c in found:
        assert np.all(np.array(c.resources) <= BUDGET)
        assert c.fps >= 100e6 / c.target * (1 - 1e-9)  # every stage meets the interval target
    # under the same LUT budget, an exit that takes some of the samples lets the big second stage
    # run at a fraction of the input rate: more throughput for the same fabric (once the budget is
    # well above what the exit's gate, merge and record FIFOs cost: below about 4,000 LUTs here
    # they eat the gain)
    for lut_cap in (5000, 8000, 12000):
        budget = BUDGET * [lut_cap / BUDGET[0], 1, 1, 1]
        capped = search(
            problem(budget)[0],
            ValidationProfile(codes, correct, scales),
            SearchSpace("max_prob", [0.5, 0.9], budget, clock_mhz=100.0),
        )
        assert all(c.resources[0] <= lut_cap for c in capped)
        best_no_exit = max(c.fps for c in capped if c.exits == ())
        best_early = max(c.fps for c in capped if c.exits == (0,))
        assert best_early > 1.3 * best_no_exit


def test_latency_to_each_exit():
    segments, codes, correct, scales = problem()
    found = search(segments, ValidationProfile(codes, correct, scales), SearchSpace("max_prob", [0.9], BUDGET, 100.0))
    c = next(c for c in found if c.exits == (0,))
    assert len(c.latency_us) == 2 and 0 < c.latency_us[0] < c.latency_us[1]  # the early exit answers sooner
    share0 = 1 - c.reach[1]
    assert c.mean_latency_us == pytest.approx(share0 * c.latency_us[0] + (1 - share0) * c.latency_us[1])


def test_reach_matches_the_routing():
    segments, codes, correct, scales = problem()
    found = search(segments, ValidationProfile(codes, correct, scales), SearchSpace("max_prob", [0.5], BUDGET, 100.0))
    c = next(c for c in found if c.exits == (0,))
    expected = (codes[:, 0] > np.floor(1024 / 0.5)).mean()  # samples whose code is above the constant go on
    assert c.reach[1] == expected


def test_pareto_front():
    def cand(fps, acc, lut, bram=0, dsp=0):
        return Candidate((), (), 1.0, fps, acc, (lut, bram, 0, dsp), (1.0,))

    a, b, c, d = cand(100, 0.9, 1000), cand(200, 0.8, 1000), cand(90, 0.85, 1200), cand(100, 0.9, 900)
    front = pareto([a, b, c, d])
    assert d in front and b in front and a not in front and c not in front


def test_gate_words_follow_the_chosen_pe_of_the_stage_end():
    segment, _ = problem()[0]
    built_at_pe_2 = Segment(
        segment.exit, segment.blocks, segment.body, segment.head, stream_bits=4, folds=64, last_pe=2
    )
    assert built_at_pe_2.words({"s0": {"b0": (8, 1, "auto")}}) == 16  # 128 values, 8 per word
    assert built_at_pe_2.words({"s0": {"b0": (1, 1, "auto")}}) == 128
    fixed_end = Segment(segment.exit, segment.blocks, segment.body, segment.head, stream_bits=4, folds=64)
    assert fixed_end.words({"s0": {"b0": (8, 1, "auto")}}) == 64


def test_routing_cost_counts_gates_merge_and_two_record_fifos_per_exit():
    from exitflow.dse.search import routing_cost
    from exitflow.hls_templates.routing import merge_resources, record_fifo_resources
    from exitflow.hw.folding import record_fifo_for

    segments, *_ = problem()
    segments = [Segment(s.exit, s.blocks, s.body, s.head, stream_bits=8, folds=100, record_bits=14) for s in segments]
    gates, rest = routing_cost(segments, (), 8)
    assert gates.shape == (0, 4)
    fifo = record_fifo_resources(32, record_fifo_for(1))  # 16 + 1 + 14 bits: a 4-byte record word
    assert rest.tolist() == [2 * fifo[0], 2 * fifo[1], 0, 0]  # the final exit's two record FIFOs
    gates, rest = routing_cost(segments, (0,), 64)
    assert gates.tolist() == [segments[0].gate(64).tolist()]
    fifo = record_fifo_resources(32, record_fifo_for(64))
    assert fifo[0] > record_fifo_resources(32, 16)[0]  # deeper gates, deeper record FIFOs
    assert rest.tolist() == [4 * fifo[0] + merge_resources(16 + 1 + 14, 2), 4 * fifo[1], 0, 0]
    # past 4 Kib the FIFO goes to block RAM
    assert record_fifo_resources(32, 256) == (30, 1)


def test_undominated_keeps_exactly_the_combinations_nothing_beats():
    from exitflow.dse.search import undominated

    rng = np.random.default_rng(3)
    accuracy = rng.choice([0.9, 0.92, 0.95, 0.97], 60)
    reach = np.concatenate([np.ones((60, 1)), rng.choice([0.1, 0.2, 0.3], (60, 2))], axis=1)
    keep = undominated(accuracy, reach)
    point = np.concatenate([-accuracy[:, None], reach[:, 1:]], axis=1)
    for i in range(60):  # brute force: i is beaten when another is no worse everywhere and better somewhere
        beaten = any(np.all(point[j] <= point[i]) and np.any(point[j] < point[i]) for j in range(60) if j != i)
        assert keep[i] == (not beaten), i
    assert keep.any() and not keep.all()
    # equal combinations do not beat each other
    assert undominated(np.array([0.9, 0.9]), np.array([[1, 0.2], [1, 0.2]])).tolist() == [True, True]


def test_beaten_threshold_combinations_are_not_searched():
    segments, codes, correct, scales = problem()
    correct = correct.copy()
    correct[::2, 1] = correct[::2, 0]  # the final exit right no more often than the early one on half of the samples
    correct[1::2, 1] = True
    stats = {}
    found = search(
        segments,
        ValidationProfile(codes, correct, scales),
        SearchSpace("max_prob", [0.5, 0.6, 0.7, 0.8, 0.9], BUDGET, 100.0),
        stats=stats,
    )
    searched = {c.thresholds for c in found if c.exits}
    assert stats["skipped_threshold_combinations"] > 0
    assert len(searched) == 5 - stats["skipped_threshold_combinations"]
    # what was left out has a searched combination at least as accurate sending no more samples on
    by = {}
    for c in found:
        if c.exits:
            by[c.thresholds] = (c.accuracy, c.reach[1])
    from exitflow.quant.policies import route, threshold_code

    for t in set([0.5, 0.6, 0.7, 0.8, 0.9]) - {th[0] for th in searched}:
        taken = route("max_prob", codes, [threshold_code("max_prob", t, float(scales[0]))])
        acc, reach = correct[np.arange(len(taken)), taken].mean(), (taken >= 1).mean()
        assert any(a >= acc and r <= reach for a, r in by.values())


def test_gate_depths_change_only_the_routing_cost():
    from exitflow.dse.search import routing_cost

    segments, codes, correct, scales = problem()
    segments = [Segment(s.exit, s.blocks, s.body, s.head, stream_bits=8, folds=100, record_bits=14) for s in segments]
    found = search(
        segments,
        ValidationProfile(codes, correct, scales),
        SearchSpace("max_prob", [0.9], BUDGET * [1, 10, 1, 1], 100.0, gate_depths=(2, 16)),
    )
    early = {}
    for c in (c for c in found if c.exits):
        early.setdefault(c.gate_depth, {})[(c.target, c.weighting)] = c
    assert set(early) == {2, 16}
    assert {c.gate_depth for c in found if not c.exits} == {2}  # no gates, one candidate per target
    g2, r2 = routing_cost(segments, (0,), 2)
    g16, r16 = routing_cost(segments, (0,), 16)
    step = (g16.sum(axis=0) + r16) - (g2.sum(axis=0) + r2)
    assert step[1] > 0  # deeper gates take block RAM
    shared = set(early[2]) & set(early[16])
    assert shared
    for key in shared:
        a, b = early[2][key], early[16][key]
        assert (a.fps, a.stage_cycles) == (b.fps, b.stage_cycles)
        assert np.array_equal(np.array(b.resources) - np.array(a.resources), step)


def test_headroom_sizes_later_stages_for_more_samples_at_the_same_throughput():
    segments, codes, correct, scales = problem()
    found = search(
        segments,
        ValidationProfile(codes, correct, scales),
        SearchSpace("max_prob", [0.5], BUDGET, 100.0, headrooms=(1.0, 2.0)),
    )
    by = {}
    for c in (c for c in found if c.exits):
        by.setdefault(c.headroom, {})[(c.target, c.weighting)] = c
    assert set(by) == {1.0, 2.0}
    assert {c.headroom for c in found if not c.exits} == {1.0}
    faster = 0
    for key in set(by[1.0]) & set(by[2.0]):
        a, b = by[1.0][key], by[2.0][key]
        p = a.reach[1]
        assert b.stage_cycles[1] * min(1.0, 2 * p) <= key[0] + 1e-9  # stage 1 sized for min(1, 2 p) of the samples
        assert a.stage_cycles[1] * p <= key[0] + 1e-9
        assert b.stage_cycles[0] == a.stage_cycles[0]  # the first stage sees every sample either way
        faster += b.stage_cycles[1] < a.stage_cycles[1]
    assert faster > 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", 'expected {"layers": {layer name: FINN node name}}, got a JSON list'),
        ('{"layers": ["conv0"]}', "got 'layers' of type list"),
        ('{"layers": {"conv0": 3}}', "got 'conv0': 3"),
        ('{"layers": {"conv0": ""}}', "got 'conv0': ''"),
        ('{"nodes": {}}', "got no 'layers' key"),
        ('{"layers": {"conv0": "MVAU_0", "conv1": "MVAU_0"}}', "two layers name the same FINN node"),
        ("{not json", "unreadable or not JSON (JSONDecodeError)"),
        (b"\xff\xfe\x00", "unreadable or not JSON (UnicodeDecodeError)"),
    ],
)
def test_layers_json_of_the_wrong_shape_is_one_line(tmp_path, content, message):
    from exitflow.core.errors import ConfigError
    from exitflow.hw.finn_flow import read_layers

    path = tmp_path / "seg0" / "layers.json"
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as err:
        read_layers(path, "build it again")
    assert (
        str(err.value).startswith(f"{path}: ")
        and message in str(err.value)
        and str(err.value).endswith("; build it again")
    )
    assert "\n" not in str(err.value)
    path.write_text('{"layers": {"conv0": "MVAU_rtl_0"}, "input_datatype": "UINT8"}')
    assert read_layers(path, "x") == {"conv0": "MVAU_rtl_0"}


def test_the_sweeps_inventory_reads_layers_json_checked(tmp_path):
    from exitflow.core.errors import ConfigError
    from exitflow.dse.search import graph_cost

    folder = tmp_path / "sweep" / "inventory" / "seg0"
    folder.mkdir(parents=True)
    (folder / "layers.json").write_text("[]")
    with pytest.raises(
        ConfigError, match=r"seg0/layers.json: expected .*got a JSON list; delete .*inventory and sweep again"
    ):
        graph_cost(folder, "xc7z020clg400-1", np.ones(4))


def test_several_policies_each_design_takes_one():
    """Beside max_prob, agreement is searched only with two or more early exits (with one it
    decides as max_prob does); the designs without exits come once; each candidate's accuracy
    and reach are the routing of its own policy, classes included."""
    from exitflow.quant.policies import route, threshold_code

    segments, codes, correct, scales = problem()
    third = Segment("e2", ("b2",), graph("s2", [layer("b2", 64, 32)]), graph("h2", [layer("h2c", 64, 10)]))
    segments = [segments[0], third, segments[1]]
    rng = np.random.default_rng(1)
    n = len(codes)
    codes = np.stack([codes[:, 0], rng.integers(1024, 4096, n), codes[:, 1]], axis=1)
    correct = np.stack([correct[:, 0], rng.random(n) < 0.93, correct[:, 1]], axis=1)
    classes = rng.integers(0, 3, (n, 3))
    scales = np.array([0.1, 0.1, 0.1])
    profile = ValidationProfile({"max_prob": codes, "agreement": codes}, correct, scales, classes)
    found = search(segments, profile, SearchSpace(("max_prob", "agreement"), [0.5, 0.9], BUDGET, 100.0))
    agreement = [c for c in found if c.policy == "agreement"]
    assert agreement and all(len(c.exits) >= 2 for c in agreement)
    assert sum(1 for c in found if not c.exits and c.policy == "agreement") == 0
    assert {c.exits for c in found if c.policy == "max_prob"} >= {(), (0,), (1,), (0, 1)}
    for c in agreement[:50]:
        constants = [threshold_code("agreement", t, 0.1) for t in c.thresholds]
        taken = route("agreement", codes, constants, classes)
        assert c.accuracy == correct[np.arange(n), taken].mean()
        assert c.reach[1] == (taken >= 1).mean()
    # agreement leaves fewer samples at the second exit than max_prob at the same thresholds
    same = [(a, m) for a in agreement for m in found if m.policy == "max_prob" and m.exits == a.exits]
    a, m = next((a, m) for a, m in same if a.thresholds == m.thresholds)
    assert a.reach[2] >= m.reach[2]
    alone = search(segments, profile, SearchSpace("agreement", [0.5, 0.9], BUDGET, 100.0))
    assert {c.exits for c in alone} >= {(), (0,), (1,), (0, 1)}  # alone, every subset


@pytest.mark.parametrize("policy", ["max_prob", "margin", "agreement"])
def test_routing_counts_every_combination_as_route_does(policy):
    """The search routes all threshold combinations at once, each extending a shorter one (bit
    sets of samples): for every combination its right answers and the samples leaving at each
    exit equal those of routing it on its own with quant.policies.route, ties and saturated
    codes included, for an odd number of samples (not a whole number of bytes)."""
    from exitflow.dse.search import route_counts
    from exitflow.quant.policies import route, threshold_code

    rng = np.random.default_rng(7)
    n, grid = 203, (0.5, 0.7, 0.9, 0.98)
    codes = rng.integers(0, 4096, (n, 5))
    codes[::9] = 4095 if policy == "max_prob" else 0  # saturated: nobody leaves
    codes[::11, 1] = codes[::11, 2]  # ties across exits
    correct = rng.random((n, 5)) < 0.8
    classes = rng.integers(0, 3, (n, 5))
    scales = np.array([0.05, 0.1, 0.2, 0.1, 0.3])
    subset = (0, 2, 3)
    kept = [0, 2, 3, 4]
    work = np.array([1.5, 2.25, 4.0, 8.5])  # a weight per kept exit
    counts, (right, heavy) = route_counts(
        policy,
        codes[:, kept],
        classes[:, kept],
        [float(scales[k]) for k in subset],
        grid,
        [correct[:, kept].T, np.ones((len(kept), n), dtype=bool)],
        [None, work],
    )
    combos = list(itertools.product(grid, repeat=len(subset)))
    assert right.shape == (len(combos),) and counts.shape == (len(combos), len(kept))
    for i, thresholds in enumerate(combos):
        constants = [threshold_code(policy, t, float(scales[k])) for t, k in zip(thresholds, subset, strict=True)]
        taken = route(policy, codes[:, kept], constants, classes[:, kept])
        assert right[i] == correct[np.arange(n), np.asarray(kept)[taken]].sum(), thresholds
        assert np.array_equal(counts[i], np.bincount(taken, minlength=len(kept))), thresholds
        assert heavy[i] == pytest.approx(work[taken].sum(), rel=1e-12)
    assert len({tuple(c) for c in counts.tolist()}) > 1  # the thresholds do route differently
    # no early exit: everything at the final one
    counts, (right,) = route_counts(policy, codes[:, [4]], classes[:, [4]], [], grid, [correct[:, [4]].T])
    assert right.tolist() == [correct[:, 4].sum()] and counts.tolist() == [[n]]


def test_undominated_in_blocks_equals_the_pairwise_rule():
    """Thousands of combinations, many of them equal, judged block by block in lexicographic
    order: the same verdicts as comparing every pair."""
    from exitflow.dse import search as search_module

    rng = np.random.default_rng(5)
    m = 1500
    accuracy = rng.choice(np.linspace(0.9, 0.99, 12), m)
    reach = np.concatenate([np.ones((m, 1)), rng.choice(np.linspace(0.05, 0.5, 8), (m, 3))], axis=1)
    point = np.concatenate([-accuracy[:, None], reach[:, 1:]], axis=1)
    no_worse = np.all(point[:, None, :] <= point[None, :, :], axis=2)
    better = np.any(point[:, None, :] < point[None, :, :], axis=2)
    expected = ~np.any(no_worse & better, axis=0)
    assert 0 < expected.sum() < m and len(np.unique(point, axis=0)) < m  # some beaten, some equal
    got = search_module.undominated(accuracy, reach)
    assert np.array_equal(got, expected)


def test_the_floor_counts_what_the_samples_do_under_each_configuration():
    """The sweep's accuracy floor counts, per threshold configuration, what certifying needs
    (bit sets of samples, no per-sample array per configuration); the counts equal those of
    routing each configuration sample by sample (dse.sweep.outcomes), on both splits, and the
    certificate tests the configurations in the order those counts give."""
    from exitflow.dse import risk
    from exitflow.dse.search import configurations
    from exitflow.dse.sweep import AccuracyFloor, _split_counts, outcomes

    segments, _, _, _ = problem()
    third = Segment("e2", ("b2",), graph("s2", [layer("b2", 64, 32)]), graph("h2", [layer("h2c", 64, 10)]))
    segments = [segments[0], third, segments[1]]
    rng = np.random.default_rng(11)
    prof = {"scales": np.array([0.1, 0.2, 0.1])}
    for split, n in (("val", 301), ("test", 157)):
        prof[f"{split}_code_max_prob"] = rng.integers(1024, 4096, (n, 3))
        prof[f"{split}_pred"] = rng.integers(0, 3, (n, 3))
        prof[f"{split}_correct"] = rng.random((n, 3)) < np.array([0.85, 0.9, 0.95])
    grid = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
    space = SearchSpace("max_prob", grid, BUDGET, 100.0)
    profile = ValidationProfile(prof["val_code_max_prob"], prof["val_correct"], prof["scales"], prof["val_pred"])
    routings = configurations(segments, profile, space)
    keys = [k for r in routings for k in r.keys()]
    assert len(keys) > 10 and any(len(k[1]) == 2 for k in keys)
    val = _split_counts(routings, segments, prof, "val", True, grid)
    test = _split_counts(routings, segments, prof, "test", False, grid)
    for split, counts in (("val", val), ("test", test)):
        by_sample = outcomes(keys, segments, prof, split)
        assert np.array_equal(counts.right, by_sample.correct.sum(axis=1))
    by_sample = outcomes(keys, segments, prof, "val")
    final = prof["val_correct"][:, -1]
    ordering, testing = risk.split(len(final))
    assert np.array_equal(val.ordering.disagreements, by_sample.disagree[:, ordering].sum(axis=1))
    for mine, theirs in zip(
        (*val.ordering.paired, *val.testing.paired),
        (
            *risk.paired_counts(by_sample.correct[:, ordering], final[ordering]),
            *risk.paired_counts(by_sample.correct[:, testing], final[testing]),
        ),
        strict=True,
    ):
        assert np.array_equal(mine, theirs)
    assert np.allclose(val.ordering.work, by_sample.work[:, ordering].astype(float).mean(axis=1), rtol=1e-6)
    floor = AccuracyFloor.of(routings, grid, segments, prof, None, 5.0, 0.9, log=lambda line: None)
    assert floor.keys == sorted(keys)
    assert np.allclose(
        floor.test_drop,
        [prof["test_correct"][:, -1].mean() - outcomes([k], segments, prof, "test").correct.mean() for k in floor.keys],
    )
    tested = floor.certificate.tested
    assert tested and all(floor.keys[i][1] for i in tested)  # the designs without exits are not tested
