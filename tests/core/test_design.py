"""The design model: lossless YAML round trip, and one clear line for every bad input."""

import dataclasses

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exitflow.core.catalogue import load_catalogue
from exitflow.core.design import (
    Design,
    ExitHead,
    LayerFolding,
    Stage,
    design_from_data,
    load_design,
    reads_previous_class,
    save_design,
)
from exitflow.core.errors import ConfigError
from exitflow.core.schema import FrozenMap, dump_yaml, to_data

BOARDS = sorted(load_catalogue())

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,11}", fullmatch=True)
layer_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,11}", fullmatch=True)
foldings = st.builds(
    LayerFolding,
    pe=st.integers(1, 4096),
    simd=st.integers(1, 4096),
    ram_style=st.sampled_from(["auto", "block", "distributed", "ultra"]),
    res_type=st.sampled_from(["lut", "dsp"]),
    buffer_style=st.sampled_from(["distributed", "block"]),
)
folding_maps = st.dictionaries(layer_names, foldings, max_size=4).map(FrozenMap)
thresholds = {
    "max_prob": st.floats(0.0, 1.0, exclude_min=True),
    "margin": st.floats(0.0, 1e6),
    "agreement": st.floats(0.0, 1.0, exclude_min=True),
}


def _without_ultra(folding):
    """UltraRAM only on a board that has it (a design with it elsewhere is refused)."""
    return FrozenMap(
        {k: dataclasses.replace(f, ram_style="block") if f.ram_style == "ultra" else f for k, f in folding.items()}
    )


@st.composite
def designs(draw):
    board = draw(st.sampled_from(BOARDS))
    fit = (lambda f: f) if load_catalogue()[board].available.uram else _without_ultra
    n = draw(st.integers(1, 5))
    stage_names = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    head_names = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    sizes = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    blocks = draw(st.lists(layer_names, min_size=sum(sizes), max_size=sum(sizes), unique=True))
    bounds = [sum(sizes[:k]) for k in range(n + 1)]
    stages = []
    for k in range(n):
        last = k == n - 1
        policy = draw(st.sampled_from(["max_prob", "margin", "agreement"]))
        head = ExitHead(
            name=head_names[k],
            policy=policy,
            threshold=None if last else draw(thresholds[policy]),
            folding=fit(draw(folding_maps)),
        )
        stages.append(
            Stage(
                name=stage_names[k],
                blocks=tuple(blocks[bounds[k] : bounds[k + 1]]),
                head=head,
                folding=fit(draw(folding_maps)),
                gate_depth=None if last else draw(st.integers(1, 1 << 20)),
            )
        )
    return Design(
        model=draw(names),
        board=board,
        clock_mhz=draw(st.none() | st.floats(1e-3, 1000.0)),
        stages=tuple(stages),
    )


@settings(max_examples=150, deadline=None)
@given(designs())
def test_yaml_round_trip_is_lossless(design):
    text = dump_yaml(design)
    again = design_from_data(yaml.safe_load(text))
    assert again == design
    assert dump_yaml(again) == text


@settings(max_examples=20, deadline=None)
@given(designs())
def test_file_round_trip(tmp_path_factory, design):
    path = tmp_path_factory.mktemp("d") / "design.yaml"
    save_design(design, path)
    assert load_design(path) == design


def test_designs_are_frozen_and_hashable():
    design = _design()
    with pytest.raises(dataclasses.FrozenInstanceError):
        design.board = "ZCU104"
    assert hash(design) == hash(design_from_data(to_data(design)))
    assert design.heads[-1].name == "final"
    assert [h.name for h in design.early_exits] == ["exit0"]


def test_clock_defaults_to_the_board():
    assert _design().resolve_clock_mhz() == 100.0
    assert dataclasses.replace(_design(), clock_mhz=150.0).resolve_clock_mhz() == 150.0


def _data():
    return {
        "model": "lenet",
        "board": "Pynq-Z2",
        "stages": [
            {
                "name": "early",
                "blocks": ["conv0"],
                "folding": {"conv0": {"pe": 4, "simd": 1}},
                "gate_depth": 4,
                "head": {"name": "exit0", "policy": "max_prob", "threshold": 0.9, "folding": {"fc": {"pe": 2}}},
            },
            {"name": "rest", "blocks": ["conv1", "fc0"], "head": {"name": "final"}},
        ],
    }


def _design():
    return design_from_data(_data())


def _mutate(path, value):
    data = _data()
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = KeyError
BAD = [
    (("colour",), "red", "colour: unknown key; allowed keys here: model, board, clock_mhz, stages"),
    (
        ("stages", 0, "head", "thresh"),
        0.5,
        "stages[0].head.thresh: unknown key; allowed keys here: name, policy, threshold, folding",
    ),
    (("stages", 0, "folding", "conv0", "pe"), 0, "stages[0].folding.conv0.pe: must be a positive integer; got 0"),
    (("stages", 0, "folding", "conv0", "simd"), "2", "stages[0].folding.conv0.simd: must be an integer; got '2' (str)"),
    (("stages", 0, "folding", "conv0", "pe"), True, "stages[0].folding.conv0.pe: must be an integer; got True (bool)"),
    (
        ("stages", 0, "folding", "conv0", "ram_style"),
        "bram",
        "stages[0].folding.conv0.ram_style: must be one of 'auto', 'block', 'distributed', 'ultra'; got 'bram'",
    ),
    (
        ("stages", 0, "folding", "conv0", "unroll"),
        2,
        "stages[0].folding.conv0.unroll: unknown key; allowed keys here: pe, simd, ram_style",
    ),
    (
        ("stages", 0, "head", "policy"),
        "softmax",
        "stages[0].head.policy: must be one of 'max_prob', 'margin', 'agreement'; got 'softmax'",
    ),
    (
        ("stages", 0, "head", "threshold"),
        1.5,
        "stages[0].head.threshold: for policy max_prob must be in (0, 1]; got 1.5",
    ),
    (
        ("stages", 0, "head", "threshold"),
        0.0,
        "stages[0].head.threshold: for policy max_prob must be in (0, 1]; got 0.0",
    ),
    (("stages", 0, "head", "threshold"), DELETE, "stages[0].head.threshold: an early exit needs a threshold"),
    (("stages", 0, "head", "threshold"), ".nan", "stages[0].head.threshold: must be a number; got '.nan' (str)"),
    (("stages", 0, "gate_depth"), DELETE, "stages[0].gate_depth: a stage followed by another needs a gate depth"),
    (("stages", 0, "gate_depth"), 0, "stages[0].gate_depth: must be a positive number of feature maps; got 0"),
    (("stages", 1, "gate_depth"), 8, "stages[1].gate_depth: the last stage has no gate after it"),
    (("stages", 1, "head", "threshold"), 0.5, "stages[1].head.threshold: the final exit takes every remaining sample"),
    (("stages", 1, "name"), "early", "stages[1].name: 'early' is used by stages[0] already"),
    (("stages", 1, "head", "name"), "exit0", "stages[1].head.name: 'exit0' is used by stages[0] already"),
    (("stages", 1, "blocks"), ["conv0"], "stages[1].blocks[0]: block 'conv0' is in stages[0] already"),
    (("stages", 1, "blocks"), [], "stages[1].blocks: must name at least one backbone block"),
    (("stages", 1, "blocks"), "conv1", "stages[1].blocks: must be a list; got 'conv1' (str)"),
    (
        ("stages", 1, "name"),
        "my stage",
        "stages[1].name: must start with a letter or _ and hold only letters, digits, _ and -; got 'my stage'",
    ),
    (("stages", 0, "folding"), {3: {"pe": 1}}, "stages[0].folding: key 3 must be a str"),
    (("stages",), [], "stages: must hold at least one stage"),
    (("stages",), DELETE, "stages: missing required key"),
    (("clock_mhz",), -100, "clock_mhz: must be in (0, 1000] MHz; got -100.0"),
    (
        ("stages", 0, "folding", "conv0", "ram_style"),
        "ultra",
        "stages[0].folding.conv0.ram_style: 'ultra' needs UltraRAM, which Pynq-Z2 (xc7z020clg400-1) does not have; use block, distributed or auto",  # noqa: E501 (the exact text)
    ),
    (
        ("stages", 0, "head", "folding", "fc", "ram_style"),
        "ultra",
        "stages[0].head.folding.fc.ram_style: 'ultra' needs UltraRAM, which Pynq-Z2",
    ),
    (
        ("stages", 0, "gate_depth"),
        10**9,
        "stages[0].gate_depth: 1,000,000,000 feature maps cannot fit on Pynq-Z2: its memory holds at most 8,236,032 bits",  # noqa: E501 (the exact text)
    ),
    (
        ("board",),
        "Pynq-Z9",
        "board: unknown board 'Pynq-Z9'; known boards: KV260, Pynq-Z1, Pynq-Z2, Ultra96-V2, ZCU104",
    ),
]


@pytest.mark.parametrize(
    "path, value, message", BAD, ids=[m.split(":")[0] + "-" + str(i) for i, (_, _, m) in enumerate(BAD)]
)
def test_bad_design_is_one_line_naming_the_key(tmp_path, path, value, message):
    file = tmp_path / "design.yaml"
    file.write_text(yaml.safe_dump(_mutate(path, value), sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_design(file)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{file}: ")
    assert message in text


def test_margin_thresholds():
    data = _data()
    data["stages"][0]["head"].update(policy="margin", threshold=12.5)
    assert design_from_data(data).stages[0].head.threshold == 12.5
    data["stages"][0]["head"].update(policy="margin", threshold=-1)
    with pytest.raises(ConfigError, match="for policy margin must be >= 0"):
        design_from_data(data)


def test_agreement_thresholds_are_max_prob_thresholds():
    data = _data()
    data["stages"][0]["head"].update(policy="agreement", threshold=0.75)
    assert design_from_data(data).stages[0].head.policy == "agreement"
    for bad in (0.0, 1.5, -0.2):
        data["stages"][0]["head"].update(policy="agreement", threshold=bad)
        with pytest.raises(ConfigError, match=r"for policy agreement must be in \(0, 1\]"):
            design_from_data(data)


def test_which_heads_read_the_previous_class():
    """Only an agreement head after the first kept exit and before the final one reads a class:
    the first has no previous exit, the final one takes every sample."""
    data = _data()
    first = dict(data["stages"][0], name="first", blocks=["conv0"])
    first["head"] = dict(first["head"], name="h0", policy="agreement", threshold=0.9)
    second = dict(first, name="second", blocks=["conv1"], head=dict(first["head"], name="h1"))
    third = dict(
        first, name="third", blocks=["fc0"], head=dict(first["head"], name="h2", policy="margin", threshold=1.0)
    )
    fourth = dict(first, name="fourth", blocks=["fc1"], head=dict(first["head"], name="h3"))
    last = {"name": "last", "blocks": ["fc2"], "head": {"name": "final", "policy": "agreement"}}
    design = design_from_data({**data, "stages": [first, second, third, fourth, last]})
    assert [reads_previous_class(design, k) for k in range(5)] == [False, True, False, True, False]


def test_loader_never_executes_anything(tmp_path):
    file = tmp_path / "design.yaml"
    marker = tmp_path / "pwned"
    file.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\nboard: Pynq-Z2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_design(file)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "file is empty"),
        ("model: lenet\n  board: [", "malformed YAML: line"),
        ("- just\n- a list\n", "must be a mapping with keys model, board, clock_mhz, stages"),
    ],
)
def test_malformed_files(tmp_path, content, message):
    file = tmp_path / "design.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_design(file)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="design.yaml: file not found"):
        load_design(tmp_path / "design.yaml")


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    path = save_design(_design(), tmp_path / "out" / "design.yaml")
    assert sorted(p.name for p in path.parent.iterdir()) == ["design.yaml"]
    assert load_design(path) == _design()


def test_ultra_ram_and_deep_gates_where_the_board_has_room():
    data = _data()
    data["board"] = "ZCU104"
    data["stages"][0]["folding"]["conv0"]["ram_style"] = "ultra"
    data["stages"][0]["gate_depth"] = 4096
    design = design_from_data(data)
    assert design.stages[0].folding["conv0"].ram_style == "ultra" and design.stages[0].gate_depth == 4096
    from exitflow.core.catalogue import get_board
    from exitflow.core.design import gate_depth_limit

    board = get_board("Pynq-Z2")
    at_limit = _mutate(("stages", 0, "gate_depth"), gate_depth_limit(board))
    assert design_from_data(at_limit).stages[0].gate_depth == gate_depth_limit(board)
    with pytest.raises(ConfigError, match=r"stages\[0\].gate_depth: [\d,]+ feature maps cannot fit on Pynq-Z2"):
        design_from_data(_mutate(("stages", 0, "gate_depth"), gate_depth_limit(board) + 1))


def test_more_early_exits_than_the_control_interconnect_reaches_are_refused():
    from exitflow.core.design import MAX_EARLY_EXITS

    def chain(early):
        stages = [
            {"name": f"s{k}", "blocks": [f"b{k}"], "gate_depth": 2, "head": {"name": f"e{k}", "threshold": 0.9}}
            for k in range(early)
        ]
        return {
            "model": "m",
            "board": "Pynq-Z2",
            "stages": [*stages, {"name": "last", "blocks": ["z"], "head": {"name": "f"}}],
        }

    assert len(design_from_data(chain(MAX_EARLY_EXITS)).stages) == MAX_EARLY_EXITS + 1
    with pytest.raises(ConfigError, match=r"stages: 15 early exits: .* keep at most 14$"):
        design_from_data(chain(MAX_EARLY_EXITS + 1))


def test_design_with_a_duplicated_key(tmp_path):
    file = tmp_path / "design.yaml"
    file.write_text("model: lenet\nboard: Pynq-Z2\nboard: ZCU104\nstages: []\n")
    with pytest.raises(
        ConfigError, match=r"design.yaml: line 3: duplicate key 'board' \(first at line 2\); keep one of them"
    ):
        load_design(file)
