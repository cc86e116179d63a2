"""core/artifacts.py: the files passed between steps, each through one dataclass and the strict
schema loader, written byte for byte as the steps wrote them before; RunDir's paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exitflow.core.artifacts import (
    BitfileStatus,
    BuildSummary,
    ExportManifest,
    GateCheck,
    GraphReport,
    HeadFile,
    LayerMap,
    ParetoReport,
    RunDir,
    StageFile,
    WeightLayer,
)
from exitflow.core.errors import ConfigError
from exitflow.core.resources import Resources
from exitflow.core.schema import FrozenMap, from_data, to_data

CONV = WeightLayer(name="conv0", mw=27, mh=16, cin=3, wbits=2)
LINEAR = WeightLayer(name="classifier", mw=64, mh=10, wbits=4)


def _manifest() -> ExportManifest:
    return ExportManifest(
        exits=("conv0", "fc1"),
        stages=(
            StageFile(
                file="stage0.onnx",
                blocks=("conv0",),
                input_shape=(3, 32, 32),
                output_shape=(16, 30, 30),
                layers=(CONV,),
            ),
            StageFile(
                file="stage1.onnx", blocks=("fc0", "fc1"), input_shape=(16, 30, 30), output_shape=(10,), layers=()
            ),
        ),
        heads=(
            HeadFile(file="head0.onnx", exit="conv0", scale=0.125, logit_bits=12, num_classes=10, layers=(LINEAR,)),
            HeadFile(file="head1.onnx", exit="fc1", scale=0.0625, logit_bits=16, num_classes=10, layers=()),
        ),
    )


# What export_stages wrote before the manifest had a dataclass: plain dicts, `cin` for a convolution only.
OLD_MANIFEST = {
    "exits": ["conv0", "fc1"],
    "stages": [
        {
            "file": "stage0.onnx",
            "blocks": ["conv0"],
            "input_shape": [3, 32, 32],
            "output_shape": [16, 30, 30],
            "layers": [{"name": "conv0", "mw": 27, "mh": 16, "cin": 3, "wbits": 2}],
        },
        {
            "file": "stage1.onnx",
            "blocks": ["fc0", "fc1"],
            "input_shape": [16, 30, 30],
            "output_shape": [10],
            "layers": [],
        },
    ],
    "heads": [
        {
            "file": "head0.onnx",
            "exit": "conv0",
            "scale": 0.125,
            "logit_bits": 12,
            "num_classes": 10,
            "layers": [{"name": "classifier", "mw": 64, "mh": 10, "wbits": 4}],
        },
        {"file": "head1.onnx", "exit": "fc1", "scale": 0.0625, "logit_bits": 16, "num_classes": 10, "layers": []},
    ],
}


def _layer_map() -> LayerMap:
    return LayerMap(
        layers=FrozenMap({"conv0": "MVAU_hls_0", "fc0": "MVAU_rtl_1"}), input_datatype="UINT8", input_scale=1 / 255
    )


OLD_LAYERS = {"layers": {"conv0": "MVAU_hls_0", "fc0": "MVAU_rtl_1"}, "input_datatype": "UINT8", "input_scale": 1 / 255}


def _summary() -> BuildSummary:
    return BuildSummary(
        design="/runs/r/sweep/design.yaml",
        board="Pynq-Z2",
        part="xc7z020clg400-1",
        gates=(GateCheck(stage="early", fifo_words=72, head_latency_cycles=90, covers=False),),
        clock_mhz=100.0,
        input_shape=(1, 8, 8),
        graphs=(
            GraphReport(
                name="early",
                kind="stage",
                lut=1234.5,
                ff=800,
                bram18=2,
                uram=0,
                dsp=1,
                interval_cycles=66,
                nodes=5,
            ),
            GraphReport(
                name="early_exit", kind="head", lut=400.0, ff=0, bram18=0, uram=0, dsp=0, interval_cycles=20, nodes=3
            ),
        ),
        bitfile=BitfileStatus(
            tools="Vivado and Vitis HLS 2024.2",
            missing=("Vivado 2024.2 (vivado)",),
            project="/runs/r/hw/vivado",
            command="exitflow build /runs/r --design /runs/r/sweep/design.yaml",
        ),
    )


# What the build wrote before build.json had a dataclass, key for key in the same order
# (a graph as GraphReport.__dict__).
OLD_SUMMARY = {
    "design": "/runs/r/sweep/design.yaml",
    "board": "Pynq-Z2",
    "part": "xc7z020clg400-1",
    "gates": [{"stage": "early", "fifo_words": 72, "head_latency_cycles": 90, "covers": False}],
    "clock_mhz": 100.0,
    "input_shape": [1, 8, 8],
    "graphs": [
        {
            "name": "early",
            "kind": "stage",
            "lut": 1234.5,
            "ff": 800,
            "bram18": 2,
            "uram": 0,
            "dsp": 1,
            "interval_cycles": 66,
            "nodes": 5,
        },
        {
            "name": "early_exit",
            "kind": "head",
            "lut": 400.0,
            "ff": 0,
            "bram18": 0,
            "uram": 0,
            "dsp": 0,
            "interval_cycles": 20,
            "nodes": 3,
        },
    ],
    "bitfile": {
        "tools": "Vivado and Vitis HLS 2024.2",
        "missing": ["Vivado 2024.2 (vivado)"],
        "project": "/runs/r/hw/vivado",
        "command": "exitflow build /runs/r --design /runs/r/sweep/design.yaml",
    },
}


def _point(**extra) -> dict:
    return {
        "exits": ["conv0", "fc1"],
        "thresholds": [0.9],
        "fps": 1000.0,
        "val_accuracy": 0.95,
        "lut": 10000.0,
        "bram18": 20.0,
        "uram": 0.0,
        "dsp": 4.0,
        "interval_cycles": 5000.0,
        "reach": [1.0, 0.4],
        "gate_depth": 4,
        "headroom": 1.2,
        "latency_cycles_to_exit": [900, 4000],
        "latency_us_to_exit": [9.0, 40.0],
        "mean_latency_cycles": 2000.0,
        "mean_latency_us": 20.0,
        **extra,
    }


def _pareto() -> ParetoReport:
    chosen = _point(
        test_accuracy=0.94,
        fps_with_gates=990.0,
        fps_with_gates_on_test_traffic=None,
        gain_with_gates=1.8,
        stage_resources=[{"lut": 6000.0, "bram18": 12.0, "uram": 0.0, "dsp": 2.0}],
        active_bound="LUT",
        fps_if_reach_minus_5pp=1050.0,
        fps_if_reach_plus_5pp=950.0,
    )
    return from_data(
        ParetoReport,
        {
            "board": "Pynq-Z2",
            "utilisation_cap": 0.8,
            "budget": {"lut": 42560.0, "bram18": 112.0, "uram": 0.0, "dsp": 176.0},
            "chosen": chosen,
            "no_exit_baseline": _point(exits=["fc1"], thresholds=[], gate_depth=None, headroom=None),
            "equal_throughput": None,
            "gain_vs_no_exit": 1.8,
            "final_exit_test_accuracy": 0.95,
            "finn_setfolding_baseline": None,
            "gain_vs_finn_setfolding": None,
            "front": [_point(active_bound="interval")],
        },
    )


ARTIFACTS = {
    "manifest": (_manifest, lambda folder: ExportManifest.read(folder)),
    "layers": (_layer_map, lambda folder: LayerMap.read(folder, "build again")),
    "build": (_summary, lambda folder: BuildSummary.read(folder, "build again")),
    "pareto": (_pareto, lambda folder: ParetoReport.read(folder, "sweep again")),
}


@pytest.mark.parametrize("name", ARTIFACTS)
def test_round_trip_through_data_and_through_the_file(tmp_path, name):
    make, read = ARTIFACTS[name]
    artifact = make()
    assert from_data(type(artifact), to_data(artifact)) == artifact
    path = artifact.write(tmp_path)
    assert path == tmp_path / type(artifact).FILE and path.is_file()
    assert read(tmp_path) == artifact
    assert [p.name for p in tmp_path.iterdir()] == [type(artifact).FILE]  # no temporary file left beside it


def test_the_manifest_is_written_as_the_export_wrote_it(tmp_path):
    _manifest().write(tmp_path)
    text = (tmp_path / "manifest.json").read_text()
    assert text == json.dumps(OLD_MANIFEST, indent=1)
    layers = json.loads(text)["stages"][0]["layers"] + json.loads(text)["heads"][0]["layers"]
    assert [list(layer) for layer in layers] == [["name", "mw", "mh", "cin", "wbits"], ["name", "mw", "mh", "wbits"]]
    assert ExportManifest.read(tmp_path).heads[0].layers[0].cin is None


def test_layers_json_is_written_as_the_build_wrote_it(tmp_path):
    _layer_map().write(tmp_path)
    assert (tmp_path / "layers.json").read_text() == json.dumps(OLD_LAYERS, indent=1)


def test_build_json_is_written_as_the_build_wrote_it(tmp_path):
    _summary().write(tmp_path)
    text = (tmp_path / "build.json").read_text()
    assert text == json.dumps(OLD_SUMMARY, indent=1)
    assert list(json.loads(text)) == [
        "design",
        "board",
        "part",
        "gates",
        "clock_mhz",
        "input_shape",
        "graphs",
        "bitfile",
    ]
    assert '"ff": 800,' in text  # an integer count stays an integer, as before


def test_a_graph_report_adds_up_to_its_resources():
    assert _summary().graphs[0].resources == Resources(1234.5, 2, 0, 1)


def _refusal(tmp_path: Path, read, name: str, content: str | None) -> str:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        read(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


@pytest.mark.parametrize(
    "content, where",
    [
        (None, "missing"),
        ('{"design": "/r/sweep/design.yaml", "board": "Pyn', "unreadable or not JSON (JSONDecodeError)"),
        (
            "[1, 2]",
            "must be a mapping with keys design, board, part, gates, clock_mhz, input_shape, graphs, bitfile; "
            "got [1, 2]",
        ),
        (
            json.dumps({**OLD_SUMMARY, "clock_mhz": "fast"}),
            "clock_mhz: must be a number; got 'fast' (str)",
        ),
        (
            json.dumps({**OLD_SUMMARY, "graphs": [{**OLD_SUMMARY["graphs"][0], "kind": "gate"}]}),
            "graphs[0].kind: must be one of 'stage', 'head'; got 'gate' (str)",
        ),
        (
            json.dumps({**OLD_SUMMARY, "bitfile": {**OLD_SUMMARY["bitfile"], "vivado": True}}),
            "bitfile.vivado: unknown key; allowed keys here: tools, missing, project, command",
        ),
        (json.dumps({k: v for k, v in OLD_SUMMARY.items() if k != "part"}), "part: missing required key"),
    ],
)
def test_a_bad_build_json_is_one_line_naming_the_key_and_the_fix(tmp_path, content, where):
    message = _refusal(tmp_path, lambda folder: BuildSummary.read(folder, "build it again"), "build.json", content)
    assert message == f"{tmp_path / 'build.json'}: {where}; build it again"


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda m: m["heads"].pop(), "stages: 2 exits need as many stages and heads; got 2 and 1"),
        (lambda m: m["exits"].append("fc2"), "stages: 3 exits need as many stages and heads; got 2 and 2"),
        (
            lambda m: m["stages"][0]["layers"][0].update(mw=0),
            "stages[0].layers[0].mw: must be a positive integer; got 0",
        ),
        (
            lambda m: m["heads"][0]["layers"][0].update(cin="3"),
            "heads[0].layers[0].cin: must be an integer; got '3' (str)",
        ),
        (lambda m: m["stages"][1].update(shape=[1]), "stages[1].shape: unknown key; allowed keys here: file, blocks"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_key_and_the_fix(tmp_path, mutate, where):
    data = json.loads(json.dumps(OLD_MANIFEST))
    mutate(data)
    message = _refusal(tmp_path, ExportManifest.read, "manifest.json", json.dumps(data))
    assert message.startswith(f"{tmp_path / 'manifest.json'}: {where}")
    assert message.endswith("; export the stages again (exitflow export)")


@pytest.mark.parametrize(
    "content, where",
    [
        (None, "missing"),
        ('{"layers": {"conv0": "MV', "unreadable or not JSON (JSONDecodeError)"),
        ('{"layers": {"conv0": "N0", "conv1": "N0"}}', "layers: two layers name the same FINN node"),
        ('{"layers": {"conv0": ""}}', "layers.conv0: must name a FINN node; got ''"),
        ('{"layers": {"conv0": 3}}', "layers.conv0: must be a string; got 3 (int)"),
        ('{"layers": {}, "input_scale": "1"}', "input_scale: must be a number; got '1' (str)"),
        ('{"layers": {}, "nodes": {}}', "nodes: unknown key; allowed keys here: layers, input_datatype, input_scale"),
    ],
)
def test_a_bad_layers_json_is_one_line_naming_the_key_and_the_fix(tmp_path, content, where):
    message = _refusal(tmp_path, lambda folder: LayerMap.read(folder, "build again"), "layers.json", content)
    assert message == f"{tmp_path / 'layers.json'}: {where}; build again"


def test_the_layers_of_a_layer_map_need_distinct_nodes_when_built_in_python_too():
    with pytest.raises(ValueError, match="two layers name the same FINN node"):
        LayerMap(layers=FrozenMap({"conv0": "N0", "conv1": "N0"}))


def test_a_manifest_of_unequal_lengths_is_refused_when_built_in_python_too():
    manifest = _manifest()
    with pytest.raises(ValueError, match="2 exits need as many stages and heads; got 1 and 2"):
        ExportManifest(exits=manifest.exits, stages=manifest.stages[:1], heads=manifest.heads)


def test_a_pareto_json_that_is_not_one_is_one_line(tmp_path):
    message = _refusal(
        tmp_path, lambda folder: ParetoReport.read(folder, "sweep again"), "pareto.json", json.dumps(OLD_SUMMARY)
    )
    assert message.endswith(
        "unknown key; allowed keys here: board, utilisation_cap, budget, chosen, "
        "no_exit_baseline, equal_throughput, gain_vs_no_exit, final_exit_test_accuracy, "
        "finn_setfolding_baseline, gain_vs_finn_setfolding, front, certificate; sweep again"
    )


# ---------------------------------------------------------------------------- RunDir


def test_run_dir_makes_a_relative_path_absolute_against_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir("runs/../runs/r")
    assert run.root == tmp_path / "runs" / "r" and run.root.is_absolute()
    assert RunDir(Path("r")) == RunDir(tmp_path / "r")
    monkeypatch.chdir("/")
    assert run.root == tmp_path / "runs" / "r"  # made absolute once, not against a later folder
    assert str(run) == os.fspath(run) == str(tmp_path / "runs" / "r")
    assert run / "notes.txt" == tmp_path / "runs" / "r" / "notes.txt"


def test_run_dir_expands_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert RunDir("~/r").root == tmp_path / "r"


def test_run_dir_knows_where_every_file_of_a_run_lives(tmp_path):
    run = RunDir(tmp_path)
    paths = {
        "model": "model.pt",
        "checkpoint": "checkpoint.pt",
        "config": "config.yaml",
        "train_log": "train_log.json",
        "profile": "profile.npz",
        "profile_summary": "profile.json",
        "profile_plot": "profile.png",
        "sweep": "sweep",
        "pareto": "sweep/pareto.json",
        "design": "sweep/design.yaml",
        "inventory": "sweep/inventory",
        "exported": "stages",
        "hw": "hw",
        "build_summary": "hw/build.json",
        "stages": "hw/stages",
        "vivado": "hw/vivado",
        "deploy": "hw/deploy",
        "driver": "hw/driver.json",
        "cosim_report": "cosim/report.json",
        "report": "report.html",
        "run_record": "run.json",
        "log": "log",
    }
    assert {name: getattr(run, name) for name in paths} == {name: tmp_path / rel for name, rel in paths.items()}


def test_run_dir_reads_the_build_and_the_sweep_naming_the_command_to_run_again(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ConfigError) as err:
        run.read_build()
    assert str(err.value) == f"{tmp_path}/hw/build.json: missing; run `exitflow build {tmp_path}` again"
    with pytest.raises(ConfigError) as err:
        run.read_pareto()
    assert str(err.value) == f"{tmp_path}/sweep/pareto.json: missing; run `exitflow sweep {tmp_path}` again"
    _summary().write(run.hw)
    _pareto().write(run.sweep)
    assert run.read_build() == _summary() and run.read_pareto() == _pareto()
    other = tmp_path / "sweep" / "finn_baseline" / "hw"
    _summary().write(other)
    assert run.read_build(other) == _summary()
