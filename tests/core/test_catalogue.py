"""The board catalogue: contents, agreement with FINN, user boards, malformed files."""

import subprocess

import pytest

from exitflow.core.catalogue import Board, DeviceResources, get_board, load_board_file, load_catalogue
from exitflow.core.errors import BoardError

EXPECTED_PARTS = {
    "Pynq-Z1": "xc7z020clg400-1",
    "Pynq-Z2": "xc7z020clg400-1",
    "Ultra96-V2": "xczu3eg-sbva484-1-i",
    "ZCU104": "xczu7ev-ffvc1156-2-e",
    "KV260": "xck26-sfvc784-2LV-c",
}

# Datasheet totals (LUT, FF, BRAM18, URAM, DSP): DS190, DS891, DS987.
DATASHEET = {
    "Pynq-Z1": (53200, 106400, 280, 0, 220),
    "Pynq-Z2": (53200, 106400, 280, 0, 220),
    "Ultra96-V2": (70560, 141120, 432, 0, 360),
    "ZCU104": (230400, 460800, 624, 96, 1728),
    "KV260": (117120, 234240, 288, 64, 1248),
}

# Catalogue minus finn.util.platforms (LUT, FF, BRAM18, URAM, DSP), documented in
# boards/README.md. FINN rounds the UltraScale+ totals; exitflow keeps the datasheet figures.
# None: FINN has no platform for the device.
DIFFERENCE_TO_FINN = {
    "Pynq-Z1": (0, 0, 0, 0, 0),
    "Pynq-Z2": (0, 0, 0, 0, 0),
    "Ultra96-V2": (-440, -880, 20, 0, 0),
    "ZCU104": (400, 800, 14, 4, 0),
    "KV260": None,
}


def test_catalogue_holds_the_five_boards():
    catalogue = load_catalogue()
    assert {name: b.part for name, b in catalogue.items()} == EXPECTED_PARTS


@pytest.mark.parametrize("name", sorted(EXPECTED_PARTS))
def test_totals_are_the_datasheet_figures(name):
    board = get_board(name)
    assert board.resources.as_tuple() == DATASHEET[name]
    assert board.shell.lut > 0 and board.shell.ff > 0
    assert board.available + board.shell == board.resources
    assert board.available.lut < board.resources.lut


@pytest.mark.parametrize("name", sorted(EXPECTED_PARTS))
def test_part_agrees_with_finn(name):
    from finn.util.basic import pynq_part_map

    board = get_board(name)
    assert pynq_part_map[board.finn_board] == board.part


def _finn_platform(board: Board):
    """FINN's resource platform for the board: by board name, else by the same device."""
    from finn.util.basic import pynq_part_map
    from finn.util.platforms import platforms

    if board.finn_board in platforms:
        return platforms[board.finn_board]()
    device = board.part.split("-")[0]
    for name, cls in platforms.items():
        if pynq_part_map.get(name, "").split("-")[0] == device:
            return cls()
    return None


@pytest.mark.parametrize("name", sorted(EXPECTED_PARTS))
def test_difference_to_finn_platform_totals_is_the_documented_one(name):
    board = get_board(name)
    platform = _finn_platform(board)
    expected = DIFFERENCE_TO_FINN[name]
    difference = None
    if platform is not None:
        finn_totals = platform.compute_resources[0]
        difference = tuple(ours - theirs for ours, theirs in zip(board.resources.as_tuple(), finn_totals, strict=False))
    assert difference == expected, f"{name}: FINN's totals changed; update boards/README.md and this table"


def test_documented_differences_are_in_the_readme(repo):
    text = (repo / "boards" / "README.md").read_text()
    for name in DIFFERENCE_TO_FINN:
        assert name in text
    assert "+400" in text and "-440" in text and "KV260" in text


def test_names_are_case_insensitive():
    assert get_board("pynq-z2").name == "Pynq-Z2"
    assert get_board("KV260") == get_board("kv260")


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(BoardError, match=r"unknown board 'Pynq-Z9'; known boards: .*Pynq-Z2.*ZCU104"):
        get_board("Pynq-Z9")


def test_family():
    assert get_board("Pynq-Z1").family == "zynq"
    assert get_board("ZCU104").family == "zynq_us+"
    assert get_board("KV260").family == "zynq_us+"


GOOD = """\
name: MyBoard
part: xc7z010clg400-1
finn_board: Pynq-Z1
clock_mhz: 125
resources: {lut: 17600, ff: 35200, bram18: 120, uram: 0, dsp: 80}
shell: {lut: 4000, ff: 5000, bram18: 4}
"""


def test_user_adds_a_board_by_dropping_a_file(user_boards, exitflow_cmd):
    (user_boards / "MyBoard.yaml").write_text(GOOD)
    board = get_board("myboard")
    assert board.resources == DeviceResources(lut=17600, ff=35200, bram18=120, uram=0, dsp=80)
    assert board.shell.uram == 0
    out = subprocess.run([*exitflow_cmd, "boards"], capture_output=True, text=True, env=_env(user_boards))
    assert out.returncode == 0
    assert "MyBoard" in out.stdout and "17,600" in out.stdout
    assert all(name in out.stdout for name in EXPECTED_PARTS)


def _env(user_boards):
    import os

    env = dict(os.environ)
    env["EXITFLOW_BOARDS"] = str(user_boards)
    return env


@pytest.mark.parametrize(
    "original, replacement, field, message",
    [
        ("clock_mhz: 125", "clock_mhz: fast", "clock_mhz", "must be a number; got 'fast'"),
        ("clock_mhz: 125", "clock_mhz: -5", "clock_mhz", "must be in (0, 1000] MHz; got -5"),
        ("part: xc7z010clg400-1", "part: virtex", "part", "must be a Xilinx part name"),
        ("{lut: 17600,", "{lut: 17k,", "resources.lut", "must be an integer; got '17k'"),
        (
            "{lut: 17600,",
            "{colour: red, lut: 17600,",
            "resources.colour",
            "unknown key; allowed keys here: lut, ff, bram18, uram, dsp",
        ),
        ("{lut: 4000,", "{lut: 40000,", "shell.lut", "shell cost 40000 exceeds the device total 17600"),
        ("finn_board: Pynq-Z1\n", "", "finn_board", "missing required key"),
        (
            "finn_board: Pynq-Z1",
            "finn_board: Pynq-Z7",
            "finn_board",
            "'Pynq-Z7' is not a board FINN knows; use one of Ultra96, Ultra96-V2, Pynq-Z1, Pynq-Z2,",
        ),
        ("{lut: 17600, ff: 35200,", "{ff: 35200,", "resources.lut", "missing key 'lut'"),
        ("bram18: 120, uram: 0, dsp: 80}", "bram18: 120, uram: 0}", "resources.dsp", "missing key 'dsp'"),
        ("clock_mhz: 125", "clock_mhz: 125\nclock_mhz: 150", "line 5", "duplicate key 'clock_mhz' (first at line 4)"),
        ("name: MyBoard", "name: MyBoard\nvendor: me", "vendor", "unknown key; allowed keys here: name, part"),
    ],
)
def test_malformed_board_file_names_the_file_and_the_field(
    user_boards, original, replacement, field, message, exitflow_cmd
):
    assert original in GOOD
    path = user_boards / "Broken.yaml"
    path.write_text(GOOD.replace(original, replacement))
    with pytest.raises(BoardError) as err:
        load_board_file(path)
    assert str(path) in str(err.value)
    assert f"{field}: {message}" in str(err.value)
    out = subprocess.run([*exitflow_cmd, "boards"], capture_output=True, text=True, env=_env(user_boards))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert str(path) in out.stderr and field in out.stderr


def test_board_file_with_broken_yaml_syntax(user_boards):
    path = user_boards / "Broken.yaml"
    path.write_text(GOOD.replace("clock_mhz: 125", "clock_mhz: [125"))
    with pytest.raises(BoardError, match=r"Broken.yaml: malformed YAML: line \d+, column \d+"):
        load_catalogue()


def test_board_file_never_executes_tags(user_boards):
    path = user_boards / "Evil.yaml"
    path.write_text(GOOD + "description: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(BoardError, match="malformed YAML"):
        load_catalogue()
    assert not (user_boards / "pwned").exists()


def test_empty_board_file(user_boards):
    (user_boards / "Empty.yaml").write_text("")
    with pytest.raises(BoardError, match="Empty.yaml: board file is empty"):
        load_catalogue()


def test_duplicate_board_name_names_both_files(user_boards):
    (user_boards / "copy.yaml").write_text(GOOD.replace("MyBoard", "pynq-z2"))
    with pytest.raises(BoardError, match=r"board 'pynq-z2' is defined twice: .*Pynq-Z2.yaml and .*copy.yaml"):
        load_catalogue()


def test_finn_boards_are_finns_own():
    from finn.util.basic import pynq_part_map

    from exitflow.core.catalogue import FINN_BOARDS

    assert set(FINN_BOARDS) == set(pynq_part_map)


def test_a_board_file_over_the_size_cap_is_refused_before_parsing(user_boards, exitflow_cmd):
    path = user_boards / "Huge.yaml"
    path.write_text(GOOD + "# " + "x" * (2 << 20) + "\n")
    with pytest.raises(BoardError, match=r"Huge.yaml: [\d,]+ bytes is over the 1,048,576-byte limit for a YAML file"):
        load_board_file(path)
    out = subprocess.run([*exitflow_cmd, "boards"], capture_output=True, text=True, env=_env(user_boards))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "1,048,576-byte limit" in out.stderr


def test_a_user_board_folder_that_is_a_file(tmp_path, monkeypatch, exitflow_cmd):
    import os

    path = tmp_path / "notafolder"
    path.write_text("x")
    monkeypatch.setenv("EXITFLOW_BOARDS", str(path))
    with pytest.raises(BoardError, match=r"notafolder: is a file, not a folder of board files \(EXITFLOW_BOARDS\)"):
        load_catalogue()
    out = subprocess.run([*exitflow_cmd, "boards"], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert path.read_text() == "x"
