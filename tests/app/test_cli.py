"""The command line: subcommands, the boards table, and the error contract."""

import json
import subprocess
import time

import pytest

from exitflow.app import cli
from exitflow.app.cli import COMMANDS, main

PLANNED = ["boards", "train", "profile", "export", "sweep", "build", "cosim", "predict", "report", "run"]


def run(cmd, *args, env=None):
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env)


def test_help_lists_every_subcommand(exitflow_cmd):
    out = run(exitflow_cmd, "--help")
    assert out.returncode == 0
    for name in PLANNED:
        assert f"\n    {name} " in out.stdout
    assert [c[0] for c in COMMANDS] == PLANNED


def test_version(exitflow_cmd):
    out = run(exitflow_cmd, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"exitflow {__import__('exitflow').__version__}"


def test_boards_prints_the_five_boards(exitflow_cmd):
    out = run(exitflow_cmd, "boards")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["board", "part", "FINN"]
    rows = {line.split()[0]: line.split() for line in lines[2:7]}
    assert set(rows) == {"Pynq-Z1", "Pynq-Z2", "Ultra96-V2", "ZCU104", "KV260"}
    assert rows["Pynq-Z2"][1:4] == ["xc7z020clg400-1", "Pynq-Z2", "100"]
    assert rows["ZCU104"][4:9] == ["230,400", "460,800", "624", "96", "1,728"]


def test_boards_json_and_single_board(exitflow_cmd):
    out = run(exitflow_cmd, "boards", "ultra96-v2", "--json")
    assert out.returncode == 0
    (board,) = json.loads(out.stdout)
    assert board["part"] == "xczu3eg-sbva484-1-i" and board["resources"]["dsp"] == 360


def test_unknown_board_is_one_line_exit_2(exitflow_cmd):
    out = run(exitflow_cmd, "boards", "Pynq-Z9")
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "exitflow boards: error: unknown board 'Pynq-Z9'; known boards: KV260, Pynq-Z1, Pynq-Z2, Ultra96-V2, "
        f"ZCU104 (add your own as a YAML file in {_user_dir()})"
    ]


def _user_dir():
    from exitflow.core.catalogue import user_board_dirs

    return user_board_dirs()[0]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(exitflow_cmd, where):
    args = ["--debug", "boards", "Pynq-Z9"] if where == "before" else ["boards", "Pynq-Z9", "--debug"]
    out = run(exitflow_cmd, *args)
    assert out.returncode == 2
    assert "Traceback (most recent call last)" in out.stderr
    assert out.stderr.rstrip().splitlines()[-1].startswith("exitflow boards: error: unknown board")


def test_every_planned_subcommand_has_arrived():
    assert [name for name, _, later in COMMANDS if later is not None] == []


def test_a_later_subcommand_says_where_it_arrives(monkeypatch, capsys):
    """The mechanism for subcommands listed before they land: exit 3, one line naming the issue."""
    monkeypatch.setattr(cli, "COMMANDS", [*COMMANDS[:-1], ("run", COMMANDS[-1][1], "a later issue (#99)")])
    assert main(["run", "--out", "d"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "`exitflow run` is not in exitflow" in err and "issue (#99)" in err


def test_usage_errors_exit_2(exitflow_cmd):
    assert run(exitflow_cmd).returncode == 2
    assert run(exitflow_cmd, "frobnicate").returncode == 2
    assert run(exitflow_cmd, "sweep", "d").returncode == 2  # --board is required
    assert run(exitflow_cmd, "sweep", "d", "--board", "Pynq-Z2", "--objective", "energy").returncode == 2


def test_internal_error_is_reported_as_a_bug(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli, "cmd_boards", broken)
    assert main(["boards"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "exitflow boards: internal error: RuntimeError: boom second line "
        "(a bug in exitflow; rerun with --debug for the traceback and report it)"
    ]
    assert main(["--debug", "boards"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_keyboard_interrupt(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_boards", interrupted)
    assert main(["boards"]) == 130
    assert capsys.readouterr().err == "exitflow boards: interrupted\n"


def test_an_interrupt_that_lands_in_a_finaliser_still_interrupts(monkeypatch, capsys):
    """Ctrl-C arriving inside a ``__del__`` or weakref callback is swallowed by Python ("Exception
    ignored in ..."); exitflow raises it again in ordinary code, and prints nothing of it."""
    import signal

    class Finalised:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    reached = []

    def work(args):
        obj = Finalised()
        del obj
        for _ in range(200):
            time.sleep(0.005)
        reached.append("the end")

    monkeypatch.setattr(cli, "cmd_boards", work)
    assert main(["boards"]) == 130
    assert reached == []
    assert capsys.readouterr().err == "exitflow boards: interrupted\n"


def test_an_interrupt_a_library_swallowed_stops_at_the_next_step(monkeypatch, capsys):
    """Library code that catches every exception swallows Ctrl-C; the next step boundary
    (``check_interrupt``, between FINN steps and before a build is committed) stops the work."""
    import signal

    from exitflow.core.errors import check_interrupt

    reached = []

    def work(args):
        try:
            signal.raise_signal(signal.SIGINT)
        except BaseException:  # noqa: BLE001 (what a careless library does)
            pass
        reached.append("after the library")
        check_interrupt()
        reached.append("the end")

    monkeypatch.setattr(cli, "cmd_boards", work)
    assert main(["boards"]) == 130
    assert reached == ["after the library"]
    assert capsys.readouterr().err == "exitflow boards: interrupted\n"
    check_interrupt()  # the next command starts afresh


def test_python_dash_m(exitflow_cmd):
    import sys

    out = run([sys.executable, "-m", "exitflow"], "boards", "KV260")
    assert out.returncode == 0 and "KV260_SOM" in out.stdout


def _one_line_usage_error(out, prog):
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr and "usage:" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"{prog}: error: ")
    return out.stderr


@pytest.mark.parametrize(
    "args, prog, message",
    [
        (
            ["sweep", "d", "--board", "Pynq-Z2", "--util", "abc"],
            "exitflow sweep",
            "argument --util: must be a number in (0, 1], e.g. 0.85; got 'abc'",
        ),
        (
            ["sweep", "d", "--board", "Pynq-Z2", "--min-accuracy", "1.5"],
            "exitflow sweep",
            "argument --min-accuracy: must be a fraction in [0, 1], e.g. 0.97; got 1.5",
        ),
        (["sweep", "d", "--board", "Pynq-Z2", "--min-accuracy", "-0.1"], "exitflow sweep", "got -0.1"),
        (["sweep", "d", "--board", "Pynq-Z2", "--min-accuracy", "nan"], "exitflow sweep", "got 'nan'"),
        (
            ["sweep", "d", "--board", "Pynq-Z2", "--max-exits", "-1"],
            "exitflow sweep",
            "argument --max-exits: must be an integer >= 0; got -1",
        ),
        (["sweep", "d", "--board", "Pynq-Z2", "--max-exits", "two"], "exitflow sweep", "got 'two'"),
        (
            ["sweep", "d", "--board", "Pynq-Z2", "--max-drop-pp", "-1"],
            "exitflow sweep",
            "argument --max-drop-pp: must be percentage points in [0, 100]; got -1",
        ),
        (
            ["sweep", "d", "--board", "Pynq-Z2", "--max-latency-us", "0"],
            "exitflow sweep",
            "argument --max-latency-us: must be a positive number of microseconds; got 0",
        ),
        (
            ["sweep", "d", "--board", "Pynq-Z2", "--util", "nan"],
            "exitflow sweep",
            "argument --util: must be a number in (0, 1]",
        ),
        (
            ["sweep", "d", "--board", "Pynq-Z2", "--confidence", "0"],
            "exitflow sweep",
            "argument --confidence: must be a probability in (0, 1], e.g. 0.9; got 0",
        ),
        (["sweep", "d", "--board", "Pynq-Z2", "--confidence", "1.01"], "exitflow sweep", "got 1.01"),
        (
            ["sweep", "d", "--board", "Pynq-Z2", "--policies", "max_prob,foo"],
            "exitflow sweep",
            "--policies: must be distinct exit policies from max_prob, margin, agreement; got max_prob, foo",
        ),
        (["sweep", "d", "--board", "Pynq-Z2", "--policies", "max_prob,max_prob"], "exitflow sweep", "--policies"),
        (["run", "--out", "o", "--confidence", "nan"], "exitflow run", "argument --confidence: must be a probability"),
        (
            ["train", "c.yaml", "--out", "o", "--threads", "0"],
            "exitflow train",
            "argument --threads: must be an integer >= 1; got 0",
        ),
        (["train", "c.yaml", "--out", "o", "--threads", "-3"], "exitflow train", "got -3"),
        (["sweep", "d"], "exitflow sweep", "the following arguments are required: --board"),
        (["sweep", "d", "--board", "Pynq-Z2", "--objective", "energy"], "exitflow sweep", "invalid choice: 'energy'"),
        (["cosim", "d", "--samples", "x"], "exitflow cosim", "argument --samples: invalid int value: 'x'"),
        (["frobnicate"], "exitflow", "invalid choice: 'frobnicate'"),
        ([], "exitflow", "the following arguments are required: COMMAND"),
        (["boards", "--colour"], "exitflow boards", "unrecognized arguments: --colour"),
    ],
)
def test_every_usage_error_is_one_line_exit_2(exitflow_cmd, tmp_path, args, prog, message):
    out = subprocess.run([*exitflow_cmd, *args], capture_output=True, text=True, cwd=tmp_path)
    assert message in _one_line_usage_error(out, prog)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_help_still_works_with_one_line_errors(exitflow_cmd):
    out = run(exitflow_cmd, "sweep", "--help")
    assert out.returncode == 0 and "usage: exitflow sweep" in out.stdout and "--max-exits" in out.stdout


def test_sweep_max_exits_reaches_the_search(monkeypatch):
    from exitflow.dse import sweep as sweep_module

    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise cli.ExitflowError("stop here")

    monkeypatch.setattr(sweep_module, "sweep", fake)
    assert main(["sweep", "d", "--board", "Pynq-Z2", "--max-exits", "1"]) == 2
    assert seen["max_exits"] == 1
    assert main(["sweep", "d", "--board", "Pynq-Z2"]) == 2
    assert seen["max_exits"] == 3  # the search's own default


@pytest.mark.parametrize(
    "content, message",
    [
        ("train:\n  epochs: 2\n  epochs: 3\n", "line 3: duplicate key 'epochs' (first at line 2); keep one of them"),
        ("data: {name: digits, name: mnist5k}\n", "line 1: duplicate key 'name' (first at line 1)"),
        ("# padding\n" * 120_000, "bytes is over the 1,048,576-byte limit for a YAML file"),
    ],
)
def test_a_config_with_duplicate_keys_or_over_the_size_cap(exitflow_cmd, tmp_path, content, message):
    config = tmp_path / "config.yaml"
    config.write_text(content)
    for command in (
        ["train", str(config), "--out", str(tmp_path / "out")],
        ["run", str(config), "--out", str(tmp_path / "out")],
    ):
        out = subprocess.run([*exitflow_cmd, *command], capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert out.stderr.startswith(f"exitflow {command[0]}: error: {config}: ") and message in out.stderr
        assert not (tmp_path / "out" / "model.pt").exists()
    assert config.read_text() == content
