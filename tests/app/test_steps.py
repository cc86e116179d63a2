"""exitflow.app.steps: one implementation per step, whose lines the command prints and whose summary
`exitflow run` records (the whole flow runs in test_run.py; here the build step's two outcomes)."""

from pathlib import Path

from exitflow.app import steps


def test_build_without_the_tools_says_what_to_run_where_they_are(monkeypatch):
    monkeypatch.setattr(steps, "build_with_project", lambda folder, design, log: ["stage0", "head0", "stage1"])
    monkeypatch.setattr(steps, "missing_tools", lambda: ["vivado", "vitis_hls"])
    said: list[str] = []
    done = steps.build("runs/a", None, say=said.append)
    assert (
        said
        == list(done.lines)
        == [
            "wrote runs/a/hw: 3 graphs through FINN code generation, the Vivado project in runs/a/hw/vivado",
            "bitfile: needs vivado and vitis_hls (not on PATH); on a machine with them run: "
            "exitflow build runs/a --design runs/a/sweep/design.yaml",
        ]
    )
    assert done.summary == (
        "3 graphs through FINN code generation, the Vivado project in hw/vivado; "
        "bitfile not run (needs vivado and vitis_hls)"
    )
    assert done.error is None
    assert steps.build("runs/a", "mine.yaml").lines[1].endswith("exitflow build runs/a --design mine.yaml")


def test_build_with_the_tools_says_its_first_line_before_the_bitfile_is_built(monkeypatch):
    events: list[str] = []

    def bitfile(folder, log):
        log("vivado: synthesis")
        return Path("/x/runs/a/hw/vivado/design.bit")

    monkeypatch.setattr(steps, "build_with_project", lambda folder, design, log: ["stage0"])
    monkeypatch.setattr(steps, "missing_tools", lambda: [])
    monkeypatch.setattr(steps, "build_bitfile", bitfile)
    done = steps.build("runs/a", None, log=events.append, say=events.append)
    assert events == [done.lines[0], "vivado: synthesis", "bitfile: /x/runs/a/hw/vivado/design.bit"]
    assert done.summary.endswith("the Vivado project in hw/vivado; bitfile /x/runs/a/hw/vivado/design.bit")
