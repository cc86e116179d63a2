"""The Vivado project exitflow writes for a design, and the bitfile path (marked `vivado`)."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from exitflow.boards.driver import RecordFormat
from exitflow.boards.vivado import build_bitfile, missing_tools
from exitflow.boards.vivado import build_with_project as build
from exitflow.core.catalogue import load_catalogue
from exitflow.core.errors import ConfigError, NotAvailableError
from exitflow.cosim.thresholds import ThresholdModel
from exitflow.hls_templates.csim import compile_cpp

DESIGN = {
    "model": "lenet",
    "board": "Pynq-Z2",
    "stages": [
        {"name": "early", "blocks": ["conv0"], "gate_depth": 6, "head": {"name": "exit0", "threshold": 0.9}},
        {
            "name": "middle",
            "blocks": ["conv1", "fc0"],
            "gate_depth": 2,
            "head": {"name": "exit1", "policy": "margin", "threshold": 1.5},
        },
        {"name": "last", "blocks": ["fc1"], "head": {"name": "final"}},
    ],
}


@pytest.fixture(scope="module")
def built(digits_run, tmp_path_factory):
    """The design built in a private copy of the digits run without a profile (other tests
    profile the shared run, in an order that xdist decides)."""
    folder = tmp_path_factory.mktemp("design")
    run = folder / "run"
    shutil.copytree(
        digits_run, run, ignore=shutil.ignore_patterns("hw", "stages", "sweep", "cosim", "profile.*", "report.html")
    )
    path = folder / "design.yaml"
    path.write_text(yaml.safe_dump(DESIGN, sort_keys=False))
    build(run, path, log=lambda line: None)
    return run / "hw"


def test_project_files(built):
    vivado = built / "vivado"
    names = sorted(p.name for p in vivado.iterdir())
    for ip in ("early_gate_ip", "middle_gate_ip", "last_tag_ip", "exitflow_ids", "exitflow_merge"):
        assert f"{ip}.cpp" in names and f"{ip}.tcl" in names
    tcl = (vivado / "block_design.tcl").read_text()
    assert "set part xc7z020clg400-1" in tcl and "tul.com.tw:pynq-z2" in tcl
    for cell in (
        "early",
        "exit0",
        "middle",
        "exit1",
        "last",
        "final",
        "early_gate",
        "middle_gate",
        "last_tag",
        "merge",
        "dma",
    ):
        assert "create_bd_cell -type ip -vlnv" in tcl and f" {cell}\n" in tcl
    assert "merge/in_V_2" in tcl and "early_gate/fm_out] [get_bd_intf_pins middle/s_axis_0" in tcl
    script = (vivado / "make_bitfile.sh").read_text()
    assert script.rstrip().endswith("vivado -mode batch -source block_design.tcl")


def test_gate_depth_is_checked_against_the_heads_latency(built):
    gates = json.loads((built / "build.json").read_text())["gates"]
    assert [g["stage"] for g in gates] == ["early", "middle"]
    for g in gates:
        assert g["head_latency_cycles"] > 0 and g["covers"] == (g["fifo_words"] >= g["head_latency_cycles"])


def test_gate_fifo_depth_follows_the_design(built):
    tcl = (built / "vivado" / "block_design.tcl").read_text()
    import re

    depths = {cell: int(d) for d, cell in re.findall(r"CONFIG\.FIFO_DEPTH \{(\d+)\}\] \[get_bd_cells (\w+)\]", tcl)}
    words = [int(line.split("FIFO of ")[1].split()[0]) for line in tcl.splitlines() if "FIFO of" in line]
    gate_fifos = [d for cell, d in depths.items() if cell.endswith("_fifo")]
    assert len(gate_fifos) == len(words) == 2 and all(
        d >= w and d & (d - 1) == 0 for d, w in zip(gate_fifos, words, strict=False)
    )
    assert words[0] > 0 and words[0] % 6 == 0  # gate_depth 6 feature maps
    # every head -> gate and exit -> merge record stream has a FIFO holding at least a gate's worth
    records = [d for cell, d in depths.items() if cell.endswith(("_rec", "_out"))]
    assert len(records) == 2 * 3 and all(d == 16 for d in records)  # 3 stages, gates of at most 16


@pytest.mark.parametrize("ip", ["early_gate_ip", "last_tag_ip", "exitflow_ids", "exitflow_merge"])
def test_exit_ip_sources_compile(built, tmp_path, ip):
    source = (built / "vivado" / f"{ip}.cpp").read_text() + "\nint main() { return 0; }\n"
    assert compile_cpp(source, tmp_path, name=ip).exists()


GATE_DRIVER = r"""
#include <cstdio>
int main() {
    unsigned long long id, rec;
    while (std::scanf("%llu %llu", &id, &rec) == 2) {
        hls::stream<ap_uint<FM_BITS>> fm_in, fm_out;
        hls::stream<ap_uint<ID_BITS>> id_in, id_out;
        hls::stream<ap_uint<REC_BITS>> rec_in;
        hls::stream<ap_uint<TAGGED>> exit_out;
        for (unsigned f = 0; f < FOLDS; f++) fm_in.write(f);
        id_in.write(id);
        rec_in.write(rec);
        NAME(fm_in, id_in, rec_in, fm_out, id_out, exit_out);
        unsigned words = 0, ids = 0, exits = 0;
        while (!fm_out.empty()) { fm_out.read(); words++; }
        while (!id_out.empty()) { id_out.read(); ids++; }
        while (!exit_out.empty()) { exit_out.read(); exits++; }
        std::printf("%u %u %u\n", words, ids, exits);
    }
    return 0;
}
"""


def test_each_gate_reads_its_own_heads_exit_flag(built, tmp_path):
    """The records of this design's heads differ in width (max_prob's code against margin's);
    each gate gets its own head's record zero-extended to the widest, so its exit flag is that
    head's top bit. The generated gate IPs, compiled and run: a record with the flag set leaves,
    one without goes on with its feature map."""
    import re

    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from exitflow.hls_templates.csim import run
    from exitflow.hls_templates.records import pack_ctu

    fmt = RecordFormat.load(built / "driver.json")
    assert fmt.code_bits[0] != fmt.code_bits[1]  # what this test is about: records of two widths
    flags = {}
    for stage, head in (("early", "exit0"), ("middle", "exit1")):
        ctu = getCustomOp(ModelWrapper(str(built / head / "model_hw.onnx")).graph.node[-1]).params()
        source = (built / "vivado" / f"{stage}_gate_ip.cpp").read_text()
        folds, fm_bits, flag_bit = re.search(
            r"exitflow::gate<(\d+), (\d+), ID_BITS, EXIT_BITS, REC_BITS, ([^>]+)>", source
        ).groups()
        driver = GATE_DRIVER.replace("NAME", f"{stage}_gate_ip").replace("FM_BITS", fm_bits)
        binary = compile_cpp(source + driver.replace("FOLDS", folds), tmp_path, name=f"{stage}_gate")
        records = [pack_ctu(5, 3, flag, ctu.code_bits, ctu.class_bits) for flag in (1, 0, 1, 0)]
        out = run(binary, "".join(f"{7 + i} {r}\n" for i, r in enumerate(records))).split("\n")[:-1]
        assert out == ["0 0 1", f"{folds} 1 0", "0 0 1", f"{folds} 1 0"], (stage, out)
        flags[stage] = (flag_bit, str(ctu.record_bits - 1))
    assert all(got == want for got, want in flags.values()), flags


def test_driver_json(built):
    fmt = RecordFormat.load(built / "driver.json")
    assert fmt.exit_bits == 2 and len(fmt.code_bits) == 3
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    ctu = getCustomOp(ModelWrapper(str(built / "exit1" / "model_hw.onnx")).graph.node[-1]).params()
    assert fmt.code_bits[0] == (10 << 10).bit_length()  # max_prob: CLASSES << FRAC_BITS
    assert fmt.code_bits[1] == ctu.logit_bits + 1 and ctu.policy == "margin"  # margin: a logit difference
    assert json.loads((built / "driver.json").read_text())["exits"] == ["exit0", "exit1", "final"]
    # this run has no profile: the driver can still set thresholds, and says why it cannot predict
    data = json.loads((built / "driver.json").read_text())
    assert [r["name"] for r in data["registers"]] == ["conv0", "fc0"] and "prediction" not in data
    assert not (built / "driver.npz").exists()
    with pytest.raises(ConfigError, match=r"holds no prediction \(.*profile.npz: not found; run `exitflow profile"):
        ThresholdModel.load(built / "driver.json")


@pytest.mark.skipif(not missing_tools(), reason="Vivado is installed: the missing-tool message does not apply")
def test_bitfile_without_vivado_names_the_tools_and_the_project(built):
    with pytest.raises(NotAvailableError) as err:
        build_bitfile(built.parent)
    assert (
        "Vivado 2024.2" in str(err.value)
        and "Vitis HLS 2024.2" in str(err.value)
        and str(built / "vivado") in str(err.value)
    )


@pytest.mark.vivado
@pytest.mark.vitis
@pytest.mark.slow
@pytest.mark.parametrize("board", sorted(load_catalogue()))
def test_bitfile_for_every_board(digits_run, tmp_path, board):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("hw", "stages"))
    path = tmp_path / "design.yaml"
    path.write_text(yaml.safe_dump({**DESIGN, "board": board}, sort_keys=False))
    build(run, path, log=lambda line: None)
    bit = build_bitfile(run)
    assert bit.exists() and bit.with_suffix(".hwh").exists()


# ---------------------------------------------------------------------------- agreement


def test_the_class_stream_of_an_agreement_head_is_wired(agreement_built, tmp_path):
    """The gate before the agreement head sends its head's classes (cls_out) through a FIFO into
    the agreement head's second input (s_axis_1, its CTU's class stream); nothing else has one."""
    import re

    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    vivado = agreement_built / "vivado"
    tcl = (vivado / "block_design.tcl").read_text()
    assert "connect_bd_intf_net [get_bd_intf_pins early_gate/cls_out] [get_bd_intf_pins exit1_cls/S_AXIS]" in tcl
    assert "connect_bd_intf_net [get_bd_intf_pins exit1_cls/M_AXIS] [get_bd_intf_pins exit1/s_axis_1]" in tcl
    assert tcl.count("s_axis_1") == 1 and tcl.count("cls_out") == 1
    depths = {cell: int(d) for d, cell in re.findall(r"CONFIG\.FIFO_DEPTH \{(\d+)\}\] \[get_bd_cells (\w+)\]", tcl)}
    assert [c for c in depths if c.endswith("_cls")] == ["exit1_cls"] and depths["exit1_cls"] == depths[
        "exit1_rec"
    ] == 16
    # the class FIFO comes after the gate it reads from, in the order Vivado creates cells
    assert tcl.index("create_bd_cell -type ip -vlnv xilinx.com:hls:early_gate_ip:1.0 early_gate") < tcl.index(
        "exit1_cls/S_AXIS"
    )
    out = _tclsh(_VIVADO_STUBS + tcl)  # the script runs through (Vivado's commands stubbed)
    assert "repo" in out
    heads = [ModelWrapper(str(agreement_built / h / "model_hw.onnx")) for h in ("exit0", "exit1", "final")]
    ctus = [getCustomOp(m.graph.node[-1]) for m in heads]
    assert [c.get_nodeattr("ClassInput") for c in ctus] == [0, 1, 0]
    assert [len(m.graph.input) for m in heads] == [1, 2, 1]
    assert heads[1].graph.input[1].name == heads[1].graph.node[-1].input[1] == "previous_class"
    exit0 = ctus[0].params()
    gate = (vivado / "early_gate_ip.cpp").read_text()
    assert "exitflow::gate_class<" in gate
    assert f", {exit0.class_bits}, {exit0.code_bits}>(fm_in, id_in, rec_in, fm_out, id_out, cls_out, exit_out" in gate
    assert f"hls::stream<ap_uint<{exit0.class_bits}>> &cls_out" in gate
    assert "gate_class" not in (vivado / "middle_gate_ip.cpp").read_text()  # the final head reads no class
    source = gate + "\nint main() { return 0; }\n"
    assert compile_cpp(source, tmp_path, name="early_gate_ip").exists()
    # the agreement CTU's HLS top reads the class stream; its estimate has the comparator
    top = Path(ctus[1].get_nodeattr("code_gen_dir_ipgen")) / f"top_{heads[1].graph.node[-1].name}.cpp"
    assert "exitflow::ctu_agreement<" in top.read_text() and "in1_V" in top.read_text()
    estimate = json.loads((agreement_built / "exit1" / "estimate_layer_resources.json").read_text())
    assert estimate[heads[1].graph.node[-1].name]["LUT"] == ctus[1].params().lut()
    without = dataclasses.replace(ctus[1].params(), class_input=False)
    assert ctus[1].params().lut() == without.lut() + exit0.class_bits + 2


# ---------------------------------------------------------------------------- Tcl quoting

HOSTILE_WORDS = [
    "plain",
    "/abs/path/x_1.0",
    "my runs/Ünïcode dir",
    "with space",
    "",
    " ",
    "tab\there",
    "new\nline",
    "{braces}",
    "{",
    "}",
    "a}b{c",
    "back\\slash",
    "trailing\\",
    "$dollar",
    "$env(HOME)",
    "[exec rm -rf /]",
    "semi;colon",
    'quote"d',
    "#hash",
    "ünï €",
    "ends with space ",
    "\\{",
    '"{"',
    "a\\\nb",
]


def _tclsh(script: str) -> str:
    tclsh = shutil.which("tclsh")
    if tclsh is None:
        pytest.skip("tclsh is not on PATH (apt-get install tcl)")
    import subprocess

    done = subprocess.run([tclsh], input=script.encode("ascii"), capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode("ascii")


def _hex_lines(values) -> list[str]:
    return [v.encode("utf-8").hex() for v in values]


def test_tcl_word_reads_back_exactly_in_tclsh():
    from exitflow.boards.vivado import tcl_list, tcl_word

    words = [tcl_word(w) for w in HOSTILE_WORDS]
    assert all(w.isascii() for w in words)
    script = "".join(f"set w {w}\nputs [binary encode hex [encoding convertto utf-8 $w]]\n" for w in words)
    script += (
        f"foreach w [list {tcl_list(HOSTILE_WORDS)}] {{ puts [binary encode hex [encoding convertto utf-8 $w]] }}\n"
    )
    assert _tclsh(script).split("\n")[:-1] == _hex_lines(HOSTILE_WORDS) * 2


# Stand-ins for Vivado's commands: every unknown command does nothing; the ones that name files
# record what they were given, so the test sees the paths the script hands Vivado.
_VIVADO_STUBS = r"""
proc unknown args { return "" }
proc record {what args} { foreach a $args { puts "$what [binary encode hex [encoding convertto utf-8 $a]]" } }
proc set_property {name value args} { if {$name eq "ip_repo_paths"} { record repo {*}$value } }
proc add_files args { record add_files [lindex $args end] }
rename file _file
proc file {sub args} { if {$sub eq "join"} { return [_file join {*}$args] }; return "" }
"""


def test_block_design_tcl_keeps_paths_with_spaces_and_non_ascii(built, tmp_path):
    from exitflow.boards.vivado import write_project

    run = tmp_path / "my runs" / "Ünïcode dir"
    shutil.copytree(built.parent, run, ignore=shutil.ignore_patterns("stages"))
    vivado = write_project(run)
    tcl = (vivado / "block_design.tcl").read_text(encoding="utf-8")
    assert tcl.isascii()
    out = _tclsh(_VIVADO_STUBS + tcl)
    repos = [bytes.fromhex(line.split()[1]).decode() for line in out.splitlines() if line.startswith("repo ")]
    summary = json.loads((run / "hw" / "build.json").read_text())
    names = [g["name"] for g in summary["graphs"]]
    assert len(repos) == len(names) + 5  # every stage and head, and the exit IPs (3 gates/tags, ids, merge)
    assert all(r.startswith(str(run / "hw") + "/") for r in repos)
    assert {str(run / "hw" / n / "stitched_ip") for n in names} <= set(repos)
    assert str(vivado / "exitflow_ids" / "sol1" / "impl" / "ip") in repos
    for ip in ("early_gate_ip", "exitflow_merge"):
        hls = (vivado / f"{ip}.tcl").read_text(encoding="utf-8")
        assert hls.isascii()
        flags = _tclsh(
            'proc unknown args { return "" }\n'
            "proc add_files {f flag value} { puts [binary encode hex [encoding convertto utf-8 $value]] }\n" + hls
        )
        include = bytes.fromhex(flags.split()[0]).decode()
        assert include.startswith("-std=c++14 -I")
        import shlex

        assert shlex.split(include)[1][2:] == str(
            Path(__import__("exitflow.hls_templates", fromlist=["TEMPLATE_DIR"]).TEMPLATE_DIR)
        )


def test_hls_script_keeps_an_include_folder_with_spaces(tmp_path):
    import shlex

    from exitflow.boards.vivado import _hls_tcl

    include = tmp_path / "my runs" / "Ünïcode $dir [x] {y}"
    tcl = _hls_tcl("exitflow_ids", "xc7z020clg400-1", 10.0, include)
    assert tcl.isascii()
    out = _tclsh(
        'proc unknown args { return "" }\n'
        "proc add_files {f flag value} { puts [binary encode hex [encoding convertto utf-8 $f]]\n"
        "  puts [binary encode hex [encoding convertto utf-8 $value]] }\n" + tcl
    )
    source, flags = (bytes.fromhex(line).decode() for line in out.split())
    assert source == "exitflow_ids.cpp" and shlex.split(flags) == ["-std=c++14", f"-I{include}"]
