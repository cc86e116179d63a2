"""The bitfile path: exitflow's exit IPs, the block design, and running Vivado.

``write_project(run_dir)`` (always, after ``exitflow build``) writes ``DIR/hw/vivado/``:
HLS tops and Vitis HLS scripts for the id source, gates, tag and merge, the block design script
(``block_design.tcl``: PS, DMA, stages, broadcasters, gate FIFOs sized by the design, heads,
gates, merge; for an agreement head after the first kept exit, the class stream from the gate
before its stage, through a record FIFO, into the head's second input) and ``driver.json`` for
the PYNQ driver (which needs nothing more for agreement: its records are max_prob's).
Each early exit's CTU has its threshold in a register on an AXI-lite port, wired to the PS
through the control interconnect; ``driver.json`` names each register (block design cell,
policy, scale, code width, the design's threshold) and, with ``driver.npz``, carries the
design's profile and built pipeline, from which the driver and ``exitflow predict`` predict what
other thresholds do (:mod:`exitflow.cosim.thresholds`).
``build_bitfile(run_dir)`` needs Vivado and Vitis HLS on PATH: it synthesises FINN's IPs for
every stage and head (HLSSynthIP, CreateStitchedIP), the exit IPs, then runs the block design to
a bitfile and ``.hwh`` in ``DIR/hw/deploy/``. Without the tools it raises one clear error naming them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from exitflow.boards.driver import RecordFormat
from exitflow.core.artifacts import BuildSummary, RunDir
from exitflow.core.catalogue import get_board
from exitflow.core.design import load_design, reads_previous_class
from exitflow.core.errors import ConfigError, NotAvailableError
from exitflow.core.templates import template_env
from exitflow.cosim.built import built_pipeline
from exitflow.cosim.thresholds import ExitRegister, ThresholdModel, profile_columns
from exitflow.hls_templates import TEMPLATE_DIR
from exitflow.hls_templates.registry import register_finn_ops
from exitflow.hw import build as hw_build
from exitflow.hw.build import VIVADO_VERSION, missing_tools
from exitflow.hw.finn_flow import finn_settings
from exitflow.hw.folding import ID_BITS, record_fifo_depth, stream_words
from exitflow.quant.profile import load_profile

BOARD_PARTS = {  # board files Vivado knows the PYNQ boards by (used when installed)
    "Pynq-Z1": "www.digilentinc.com:pynq-z1:part0:1.0",
    "Pynq-Z2": "tul.com.tw:pynq-z2:part0:1.0",
    "Ultra96-V2": "avnet.com:ultra96v2:part0:1.2",
    "ZCU104": "xilinx.com:zcu104:part0:1.1",
    "KV260": "xilinx.com:kv260_som:part0:1.3",
}


_TCL_BARE = re.compile(r"[A-Za-z0-9_./:+=,@%-]+")
_TCL_SPECIAL = set('\\{}[]$"; \t\n\r#')


def tcl_word(value: object) -> str:
    """``value`` as one Tcl word that reads back exactly, whatever it holds (spaces, braces,
    backslashes, ``$``, ``[ ]``, non-ASCII characters): bare when it is plain, in braces when
    that is enough (ASCII without braces or backslashes: nothing is substituted inside braces),
    otherwise every special character backslash-escaped and every non-ASCII character written as
    a ``\\u``/``\\U`` escape, so the script is ASCII and reads the same in any system encoding."""
    text = str(value)
    if _TCL_BARE.fullmatch(text):
        return text
    if text.isascii() and not set(text) & set("{}\\\r\n") and text.isprintable():
        return "{" + text + "}"
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _TCL_SPECIAL:
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}.get(ch, "\\" + ch))
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x80:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out) or "{}"


def tcl_list(values) -> str:
    """A Tcl list of ``values`` (each one :func:`tcl_word`)."""
    return " ".join(tcl_word(v) for v in values)


def _render(template: str, **values) -> str:
    env = template_env(Path(__file__).parent / "templates", filters={"tcl": tcl_word, "tcl_list": tcl_list})
    return env.get_template(template).render(**values)


def _shell_word(text: str) -> str:
    """``text`` as one word for the shell-like splitting Vitis HLS applies to ``-cflags``."""
    return shlex.quote(text)


def _hls_tcl(name: str, part: str, clock_ns: float, include: Path) -> str:
    cflags = f"-std=c++14 -I{_shell_word(str(include))}"
    return "\n".join(
        [
            f"open_project -reset {tcl_word(name)}",
            f"add_files {tcl_word(name + '.cpp')} -cflags {tcl_word(cflags)}",
            f"set_top {tcl_word(name)}",
            "open_solution -reset sol1",
            f"set_part {tcl_word(part)}",
            f"create_clock -period {clock_ns:g}",
            "csynth_design",
            "export_design -format ip_catalog",
            "exit",
            "",
        ]
    )


def write_project(run_dir: str | Path, summary: BuildSummary | None = None) -> Path:
    """Exit IP sources, the block design script and driver.json, from the build's summary
    (``summary``, or DIR/hw/build.json when it is not given)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    register_finn_ops()

    run = RunDir(run_dir)
    hw = run.hw
    if summary is None:
        summary = run.read_build()
    design = load_design(summary.design)
    board = get_board(design.board)
    clock_ns = 1000.0 / summary.clock_mhz
    heads = [ModelWrapper(str(hw / s.head.name / "model_hw.onnx")) for s in design.stages]
    ctus = [getCustomOp(m.graph.node[-1]).params() for m in heads]
    exits = len(design.stages)
    fmt = RecordFormat(ID_BITS, max(1, (exits - 1).bit_length()), ctus[0].class_bits, tuple(c.code_bits for c in ctus))
    out = run.vivado
    out.mkdir(parents=True, exist_ok=True)
    common = {"id_bits": ID_BITS, "exit_bits": fmt.exit_bits, "rec_bits": fmt.record_bits}
    ips, stages = [], []
    stage_models = [ModelWrapper(str(hw / s.name / "model_hw.onnx")) for s in design.stages]
    for k, stage in enumerate(design.stages):
        last = k == exits - 1
        out_node = getCustomOp(stage_models[k].graph.node[-1])
        fm_bits = out_node.get_outstream_width()
        folds = stream_words(out_node)
        if not last:
            # its head's record, zero-extended to the widest: the exit flag is that record's top bit
            flag = ctus[k].record_bits - 1
            gate = {"fm_bits": fm_bits, "folds": folds, "exit_index": k, "exit_flag_bit": flag, "class_bits": 0}
            if reads_previous_class(design, k + 1):  # the next head's CTU compares with this head's class
                gate.update(class_bits=ctus[k].class_bits, class_lsb=ctus[k].code_bits)
            ips.append(("gate", f"{stage.name}_gate_ip", gate))
        else:
            ips.append(("tag", f"{stage.name}_tag_ip", {"exit_index": k}))
        stages.append(
            {
                "name": stage.name,
                "head": stage.head.name,
                "vlnv": f"xilinx.com:user:{stage.name}:1.0",
                "head_vlnv": f"xilinx.com:user:{stage.head.name}:1.0",
                "gate_vlnv": f"xilinx.com:hls:{stage.name}_gate_ip:1.0",
                "tag_vlnv": f"xilinx.com:hls:{stage.name}_tag_ip:1.0",
                "input": "dma/M_AXIS_MM2S" if k == 0 else f"{design.stages[k - 1].name}_gate/fm_out",
                "id_source": "ids/out" if k == 0 else f"{design.stages[k - 1].name}_gate/id_out",
                "fifo_depth": 1 << max(4, ((stage.gate_depth or 1) * folds - 1).bit_length()),
                "fifo_words": (stage.gate_depth or 0) * folds,
                "record_fifo_depth": record_fifo_depth(design),
                # agreement after the first kept exit: the classes the gate before this stage sends
                "class_source": f"{design.stages[k - 1].name}_gate/cls_out" if reads_previous_class(design, k) else "",
                # control interconnect ports: M00 the DMA, M01 the id source, then the registers
                "register_port": "" if last else f"ctrl_sc/M{2 + k:02d}_AXI",
            }
        )
    ips += [("ids", "exitflow_ids", {}), ("merge", "exitflow_merge", {"exits": exits})]
    script = [
        "#!/usr/bin/env bash",
        "# Vitis HLS for exitflow's exit IPs, then the block design with Vivado.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
    ]
    for kind, name, extra in ips:
        (out / f"{name}.cpp").write_text(_render("exit_ip.cpp.j2", kind=kind, name=name, **common, **extra))
        (out / f"{name}.tcl").write_text(_hls_tcl(name, board.part, clock_ns, TEMPLATE_DIR))
        script.append(f"(vitis_hls -f {name}.tcl || vitis-run --mode hls --tcl {name}.tcl)")
    script.append("vivado -mode batch -source block_design.tcl")
    repos = [str(hw / s["name"] / "stitched_ip") for s in stages] + [
        str(hw / s["head"] / "stitched_ip") for s in stages
    ]
    repos += [str(out / name / "sol1" / "impl" / "ip") for _, name, _ in ips]
    tcl = _render(
        "block_design.tcl.j2",
        design_name=design.model,
        board=board,
        board_part=BOARD_PARTS.get(board.name, ""),
        vivado_version=VIVADO_VERSION,
        clock_mhz=summary.clock_mhz,
        ip_repos=repos,
        stages=stages,
        ids={"vlnv": "xilinx.com:hls:exitflow_ids:1.0"},
        merge_vlnv="xilinx.com:hls:exitflow_merge:1.0",
        control_ports=2 + exits - 1,
        input_width=max(8, getCustomOp(stage_models[0].graph.node[0]).get_instream_width()),
        record_width=8 * fmt.word_bytes,
    )
    (out / "block_design.tcl").write_text(tcl)
    (out / "make_bitfile.sh").write_text("\n".join(script) + "\n")
    (out / "make_bitfile.sh").chmod(0o755)
    registers = [
        ExitRegister(
            stage.blocks[-1],
            stage.head.name,
            stage.name,
            tuple(stage.blocks),
            ctu.policy,
            ctu.scale,
            ctu.frac_bits,
            ctu.code_bits,
            float(stage.head.threshold),
        )
        for stage, ctu in zip(design.stages[:-1], ctus, strict=False)
    ]
    driver = {
        "records": fmt.to_json(),
        "exits": [s.head.name for s in design.stages],
        "input_shape": list(summary.input_shape),
        "registers": [r.to_data() for r in registers],
    }
    arrays = run.driver.with_suffix(".npz")
    arrays.unlink(missing_ok=True)
    try:  # the driver's predictions: a build never fails for want of them
        profile = load_profile(run.root)  # checked: one line if missing, damaged or foreign
        codes, classes, labels, _ = profile_columns(profile, design, "test", str(run.profile))
        final = str(profile["exit_names"][-1])
        pipeline = built_pipeline(hw, design, summary.clock_mhz, f"build it again with `exitflow build {run.root}`")
        model = ThresholdModel(tuple(registers), final, codes, classes, labels, pipeline, "test")
        model.save(run.driver)
        driver["prediction"] = model.to_data()
    except ConfigError as err:
        driver["no_prediction"] = str(err)
    run.driver.write_text(json.dumps(driver, indent=1))
    return out


def build_with_project(
    run_dir: str | Path, design_path: str | Path | None = None, log=print, hw_dir: str | Path | None = None
) -> list:
    """:func:`exitflow.hw.build.build` with the Vivado project (:func:`write_project`) written
    from the build's summary before build.json commits the build, as ``exitflow build`` does."""
    return hw_build.build(run_dir, design_path, log=log, hw_dir=hw_dir, vivado_project=write_project)


def build_bitfile(run_dir: str | Path, log=print) -> Path:
    """With Vivado and Vitis HLS: FINN IPs for every stage and head, the exit IPs, the bitfile."""
    missing = missing_tools()
    run = RunDir(run_dir)
    if missing:
        raise NotAvailableError(
            f"the bitfile needs {' and '.join(missing)}, not found on PATH; the generated project is in "
            f"{run.vivado} (run make_bitfile.sh there after `exitflow build` on a machine with them)"
        )
    from finn.transformation.fpgadataflow.create_stitched_ip import CreateStitchedIP
    from finn.transformation.fpgadataflow.hlssynth_ip import HLSSynthIP
    from qonnx.core.modelwrapper import ModelWrapper

    summary = run.read_build()
    for graph in summary.graphs:
        folder = run.hw / graph.name
        with finn_settings(folder / "ipgen"):
            model = ModelWrapper(str(folder / "model_hw.onnx")).transform(HLSSynthIP())
            model = model.transform(CreateStitchedIP(summary.part, 1000.0 / summary.clock_mhz, ip_name=graph.name))
        shutil.copytree(
            model.get_metadata_prop("vivado_stitch_proj") + "/ip", folder / "stitched_ip", dirs_exist_ok=True
        )
        log(f"IP for {graph.kind} {graph.name}: {folder / 'stitched_ip'}")
    subprocess.run(["bash", str(run.vivado / "make_bitfile.sh")], check=True, cwd=run.vivado)
    return run.deploy / "exitflow.bit"
