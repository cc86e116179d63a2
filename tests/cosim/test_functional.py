"""The functional cosimulation: FINN's execution and exitflow's vectorised engine agree bit for
bit with each other and with the Brevitas model + the policy function, for lenet, cnv, resnet8 and
mobilenet and two designs each; a corrupted weight is found and located."""

import shutil

import numpy as np
import pytest
from qonnx.core.modelwrapper import ModelWrapper

from exitflow.cosim import assert_bit_exact, cosimulate, load_built
from exitflow.cosim.engines import FinnEngine, VectorisedEngine, first_difference

from .conftest import DESIGNS

CASES = [(m, d) for m, designs in DESIGNS.items() for d in designs]


@pytest.mark.slow
@pytest.mark.parametrize("model_name, design", CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_engines_agree_with_each_other_and_the_model(cosim_designs, model_name, design):
    run, path = cosim_designs[model_name, design]
    # FINN's reference on the whole test split too, for both models
    reference = 10_000
    report = cosimulate(run, path, engine="both", reference_samples=reference)
    vectorised, finn = report.engines
    assert (vectorised.name, finn.name) == ("vectorised", "finn")
    assert vectorised.samples == report.samples > 0  # the whole test split
    assert finn.samples == min(reference, report.samples) == report.engines_compared
    assert report.mismatch_count == 0, [m.describe() for m in report.mismatches]
    assert vectorised.matches_model == vectorised.samples and finn.matches_model == finn.samples
    assert np.array_equal(vectorised.results.exit[: finn.samples], finn.results.exit)
    assert np.array_equal(vectorised.results.cls[: finn.samples], finn.results.cls)
    assert np.array_equal(vectorised.results.code[: finn.samples], finn.results.code)
    # the thresholds send samples to more than one exit, so routing is exercised
    assert len(set(vectorised.results.exit.tolist())) >= 2
    assert report.measured_fractions == report.model_fractions
    assert report.predicted_fractions == pytest.approx(report.measured_fractions)  # whole split: the prediction


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", [("cnv", "conv0+conv5-margin"), ("resnet8", "stem+stack2-margin"), ("mobilenet", "stem+sep4-margin")]
)
def test_every_intermediate_tensor_agrees(cosim_designs, case):
    """Layer by layer, on random integer input of each graph's datatype (forks and adds, depthwise
    units and global pooling included)."""
    run, path = cosim_designs[case]
    built = load_built(run, path)
    rng = np.random.default_rng(3)
    for pair in built.graphs:
        for graph in pair:
            name = graph.model.graph.input[0].name
            dt = graph.model.get_tensor_datatype(name)
            shape = graph.model.get_tensor_shape(name)
            x = rng.integers(int(dt.min()), int(dt.max()) + 1, (2, *shape[1:]))
            want, want_all = FinnEngine(graph.model).run(x, keep=True)
            got, got_all = VectorisedEngine(graph.model).run(x, keep=True)
            assert np.array_equal(want, got), graph.name
            assert set(want_all) == set(got_all)
            assert first_difference(want_all, got_all, [n.name for n in graph.model.graph.node]) is None


def _corrupt(run, tmp_path, graph_name, layer):
    """A copy of ``run`` whose built ``graph_name`` has one weight of ``layer`` changed."""
    import json

    copy = tmp_path / "corrupt"
    shutil.copytree(run, copy)
    folder = copy / "hw" / graph_name
    node_name = json.loads((folder / "layers.json").read_text())["layers"][layer]
    model = ModelWrapper(str(folder / "model_hw.onnx"))
    node = next(n for n in model.graph.node if n.name == node_name)
    w = model.get_initializer(node.input[1]).copy()
    w[0, :] = np.where(w[0, :] > w.min(), w.min(), w.max())  # a different weight for every output
    model.set_initializer(node.input[1], w)
    model.save(str(folder / "model_hw.onnx"))
    return copy, node_name


@pytest.mark.slow
def test_a_corrupted_weight_is_located(lenet_built, tmp_path):
    run, path = lenet_built
    copy, node_name = _corrupt(run, tmp_path, "s0", "conv0")
    report = cosimulate(copy, path, engine="vectorised")
    assert report.mismatch_count > 0 and not report.bit_exact
    first = report.mismatches[0]
    assert first.engine == "vectorised" and first.against == "model"
    assert (first.graph, first.layer, first.node) == ("stage s0", "conv0", node_name)
    assert first.element is not None and len(first.element) == 3  # (row, column, channel) of the feature map
    assert first.element_expected != first.element_got
    assert (
        f"first difference in stage s0, layer conv0, FINN node {node_name}, element {first.element}" in first.describe()
    )
    # layer by layer: the same sample through the built graph and the corrupted one
    images = load_built(run, path)
    good = ModelWrapper(str(run / "hw" / "s0" / "model_hw.onnx"))
    bad = ModelWrapper(str(copy / "hw" / "s0" / "model_hw.onnx"))
    from exitflow.core.data import load_splits

    x = images.input_order(load_splits(images.config.data).test.x[first.sample : first.sample + 1])
    _, want = FinnEngine(good).run(x, keep=True)
    _, got = VectorisedEngine(bad).run(x, keep=True)
    diff = first_difference(want, got, [n.name for n in good.graph.node])
    assert diff is not None and diff.node == node_name


@pytest.mark.slow
def test_engines_disagreeing_are_located_layer_by_layer(lenet_built, tmp_path, monkeypatch):
    """A fault in one engine only (here: FINN's reference reads a corrupted copy of a head)."""
    from exitflow.cosim import functional

    run, path = lenet_built
    copy, node_name = _corrupt(run, tmp_path, "exit0", "classifier")
    corrupted = ModelWrapper(str(copy / "hw" / "exit0" / "model_hw.onnx"))
    original = functional.Graph.engine

    def engine(self, name):
        if name == "finn" and self.name == "exit0" and name not in self.engines:
            self.engines[name] = FinnEngine(corrupted)
        return original(self, name)

    monkeypatch.setattr(functional.Graph, "engine", engine)
    report = cosimulate(run, path, engine="both", reference_samples=40)
    against_finn = [m for m in report.mismatches if m.against == "finn"]
    assert against_finn, "the corrupted reference must disagree with the vectorised engine"
    m = against_finn[0]
    assert (m.graph, m.layer, m.node) == ("head exit0", "classifier", node_name)
    assert m.element is not None and m.element_expected != m.element_got


@pytest.mark.slow
def test_assert_bit_exact_helper(lenet_built, tmp_path):
    run, path = lenet_built
    report = assert_bit_exact(run, design=path, samples=50)
    assert report.bit_exact and report.samples == 50
    copy, _ = _corrupt(run, tmp_path, "s1", "conv1")
    with pytest.raises(AssertionError, match=r"samples do not cosimulate bit-exactly:\n  sample \d+: .*layer conv1"):
        assert_bit_exact(copy, design=path)


@pytest.mark.slow
def test_the_plugin_fixture_in_a_users_suite(pytester, lenet_built):
    """A user's test asserts bit-exactness in one line through exitflow's pytest plugin."""
    run, path = lenet_built
    pytester.makeconftest('pytest_plugins = ["exitflow.testing"]')
    pytester.makepyfile(f"""
def test_design(cosim_bit_exact):
    cosim_bit_exact({str(run)!r}, design={str(path)!r}, samples=20)
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.slow
def test_an_agreement_head_cosimulates_bit_exactly(lenet_agreement_built):
    """A design whose second kept head uses agreement: its CTU reads, for every sample that
    reaches it, the class the sample had at the first kept exit. Both engines agree with the
    Brevitas model + the policy function on every test sample, and the class test matters: some
    samples pass the second exit's threshold yet go on because the two exits disagree."""
    from exitflow.cosim.functional import expected_results, model_logits
    from exitflow.quant import policies

    run, path = lenet_agreement_built
    built = load_built(run, path)
    assert [p.class_input for p in built.ctu] == [False, True, False]
    assert built.class_inputs[1] == "previous_class" and built.class_inputs[0] is None
    head = built.graphs[1][1].model
    assert [t.name for t in head.graph.input][1] == "previous_class"
    assert head.graph.node[-1].input[1] == "previous_class"  # straight into the CTU
    report = cosimulate(run, path, engine="both", reference_samples=12)
    vectorised, finn = report.engines
    assert report.mismatch_count == 0, [m.describe() for m in report.mismatches]
    assert vectorised.matches_model == vectorised.samples == report.samples > 0
    assert finn.matches_model == finn.samples == 12
    assert report.measured_fractions == report.model_fractions
    assert report.predicted_fractions == pytest.approx(report.measured_fractions)
    assert len(set(vectorised.results.exit.tolist())) == 3
    # the agreement test decides for some samples: the same thresholds with max_prob at the second
    # exit send them elsewhere
    from exitflow.core.data import load_splits

    images = load_splits(built.config.data).test.x
    logits, scales, bits = model_logits(built, images)
    cls = np.stack(
        [policies.confidence_code("max_prob", logits[:, k], float(scales[k]), int(bits[k]))[0] for k in range(3)], 1
    )
    code = np.stack(
        [policies.confidence_code("max_prob", logits[:, k], float(scales[k]), int(bits[k]))[1] for k in range(3)], 1
    )
    early = built.design.stages[:-1]
    constants = [
        policies.threshold_code(s.head.policy, s.head.threshold, float(scales[k])) for k, s in enumerate(early)
    ]
    reached = code[:, 0] > constants[0]
    disagree = reached & (code[:, 1] <= constants[1]) & (cls[:, 1] != cls[:, 0])
    assert disagree.any()
    assert (vectorised.results.exit[disagree] == 2).all()
    agree = reached & (code[:, 1] <= constants[1]) & (cls[:, 1] == cls[:, 0])
    assert agree.any() and (vectorised.results.exit[agree] == 1).all()
    expected = expected_results(built, logits, scales, bits)
    assert np.array_equal(expected.exit, vectorised.results.exit)
    assert np.array_equal(expected.cls, vectorised.results.cls) and np.array_equal(
        expected.code, vectorised.results.code
    )


def test_a_head_built_without_its_class_input_is_refused(lenet_agreement_built, tmp_path):
    """Hardware whose agreement CTU does not read the previous class (hand-edited here) is not the
    design's: one line naming the head and the rebuild."""
    from onnx import helper

    from exitflow.core.errors import ConfigError

    run, path = lenet_agreement_built
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    graph = copy / "hw" / "exit1" / "model_hw.onnx"
    model = ModelWrapper(str(graph))
    ctu = model.graph.node[-1]
    attribute = next(a for a in ctu.attribute if a.name == "ClassInput")
    ctu.attribute.remove(attribute)
    ctu.attribute.append(helper.make_attribute("ClassInput", 0))
    model.save(str(graph))
    with pytest.raises(ConfigError) as err:
        load_built(copy, path)
    text = str(err.value)
    assert "\n" not in text and str(copy / "hw" / "exit1") in text
    assert (
        "built without the previous exit's class as an input, which the design's agreement head at kept exit 1 needs"
        in text
    )
