"""``DIR/report.html``: one self-contained page about a run folder.

Everything comes from the files in the folder (``run.json``, ``config.yaml``, ``profile.json``,
``profile.png``, ``sweep/``, ``hw/build.json``, ``cosim/report.json``); the images are embedded
as base64 ``data:`` URIs, so the file has no external reference and reads offline. A part that is
missing (or unreadable) is listed under "What was not run" with the command that would make it;
``exitflow report DIR`` never fails on a partial folder.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from exitflow.core.catalogue import DEFAULT_BOARD
from exitflow.core.design import load_design
from exitflow.core.errors import ConfigError
from exitflow.core.files import atomic_write, user_path
from exitflow.core.resources import NAMES
from exitflow.core.templates import template_env
from exitflow.hw.build import backup_of, is_finished

TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class Figure:
    title: str
    caption: str
    source: str  # file in the run folder
    data_uri: str


@dataclass(frozen=True)
class NotRun:
    what: str
    why: str
    command: str


@dataclass(frozen=True)
class Row:
    """One row of a table: label and cells, already formatted."""

    label: str
    cells: tuple[str, ...]


@dataclass(frozen=True)
class StageView:
    name: str
    blocks: str
    head: str
    policy: str
    threshold: str
    gate_depth: str
    folding: tuple[Row, ...]  # layer -> PE, SIMD, weights


@dataclass
class ReportData:
    run_dir: str
    generated: str
    settings: tuple[Row, ...] = ()
    steps: tuple[Row, ...] = ()
    headline: tuple[Row, ...] = ()  # the key numbers
    figures: dict[str, Figure] = field(default_factory=dict)  # "pareto", "profile", "resources"
    compare: tuple[Row, ...] = ()  # chosen vs both baselines
    exit_accuracy: tuple[Row, ...] = ()
    stage_resources: tuple[Row, ...] = ()
    stages: tuple[StageView, ...] = ()
    design_note: str = ""
    cosim: tuple[Row, ...] = ()
    fractions: tuple[Row, ...] = ()
    cycle: tuple[Row, ...] = ()
    latency: tuple[Row, ...] = ()
    graphs: tuple[Row, ...] = ()
    not_run: list[NotRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # files that exist but could not be read


def _read_json(path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        problems.append(f"{path.name}: unreadable ({type(err).__name__}); the part it holds is left out")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name}: not a JSON object; the part it holds is left out")
        return None
    return data


def _figure(path: Path, title: str, caption: str, run_dir: Path) -> Figure | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return Figure(
        title, caption, str(path.relative_to(run_dir)), "data:image/png;base64," + base64.b64encode(raw).decode()
    )


def _n(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


#: The resources the report's tables show (URAM left out: the PYNQ boards' designs use none).
SHOWN = tuple(name for name in NAMES if name != "uram")


def _resources(record: dict) -> tuple[str, ...]:
    """LUT, BRAM18 and DSP of a record of pareto.json or build.json (keys as
    :meth:`~exitflow.core.resources.Resources.as_dict` writes them), "-" where one is missing."""
    return tuple(_n(record.get(name)) for name in SHOWN)


def _pct(value, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f} %"


def collect(run_dir: str | Path) -> ReportData:
    """What the report shows, read from ``run_dir``."""
    run_dir = user_path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder; run `exitflow run --out {run_dir}` first")
    r = ReportData(run_dir=str(run_dir.resolve()), generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    problems = r.problems
    run = _read_json(run_dir / "run.json", problems) or {}
    pareto = _read_json(run_dir / "sweep" / "pareto.json", problems)
    profile = _read_json(run_dir / "profile.json", problems)
    build = _read_json(run_dir / "hw" / "build.json", problems)
    backup = backup_of(run_dir / "hw")
    if build is None and is_finished(backup):
        problems.append(
            f"hw/ holds an interrupted build; the build shown is the last finished one, which waits in "
            f"{backup} (`exitflow cosim {run_dir}` or `exitflow build {run_dir}` puts it back)"
        )
        build = _read_json(backup / "build.json", problems)
    cosim = _read_json(run_dir / "cosim" / "report.json", problems)
    board = run.get("board") or (pareto or {}).get("board") or DEFAULT_BOARD
    d = str(run_dir)

    # -- settings and steps
    settings = [Row("run folder", (r.run_dir,)), Row("board", (board,))]
    config_text = run.get("config")
    if config_text is None and (run_dir / "config.yaml").is_file():
        config_text = (run_dir / "config.yaml").read_text()
    if config_text:
        settings.append(Row("config", (config_text.strip(),)))
    r.settings = tuple(settings)
    steps = run.get("steps") if isinstance(run.get("steps"), dict) else {}
    r.steps = tuple(
        Row(name, (_n(rec.get("seconds"), 1), str(rec.get("summary", "")), str(rec.get("finished", ""))))
        for name, rec in steps.items()
        if isinstance(rec, dict)
    )

    # -- figures
    for key, path, title, caption in (
        (
            "pareto",
            run_dir / "sweep" / "pareto.png",
            "Pareto front",
            "Throughput against validation accuracy of the designs on the front (colour: LUT), the chosen design, "
            "the best design without early exits and FINN's SetFolding without exits, under the same budget.",
        ),
        (
            "profile",
            run_dir / "profile.png",
            "Exit rate and accuracy against the threshold",
            "Per exit, on the test split: the share of samples that would leave at a max_prob threshold, and the "
            "accuracy of those that do.",
        ),
        (
            "resources",
            run_dir / "sweep" / "resources.png",
            "Resources per stage against the board budget",
            "LUT, BRAM18 and DSP of each stage of the chosen design (with its head) and of the best design "
            "without exits; the dashed line is the budget after the PYNQ shell and the utilisation cap.",
        ),
    ):
        fig = _figure(path, title, caption, run_dir)
        if fig is not None:
            r.figures[key] = fig

    # -- profile
    if profile:
        test = profile.get("splits", {}).get("test", {})
        r.exit_accuracy = tuple(Row(name, (_pct(acc),)) for name, acc in test.get("accuracy", {}).items())
    else:
        r.not_run.append(NotRun("profile", "no profile.json", f"exitflow profile {d}"))
    if "profile" not in r.figures and profile:
        r.not_run.append(NotRun("exit-rate plot", "no profile.png", f"exitflow profile {d}"))

    # -- sweep
    if pareto:
        chosen, no_exit = pareto.get("chosen", {}), pareto.get("no_exit_baseline", {})
        finn = pareto.get("finn_setfolding_baseline")
        budget = pareto.get("budget", {})
        r.headline = (
            Row("chosen design", (f"exits {', '.join(chosen.get('exits', [])) or 'none'}",)),
            Row("throughput (dse model)", (f"{_n(chosen.get('fps'))} samples/s",)),
            Row("gain over the best design without exits", (f"{_n(pareto.get('gain_vs_no_exit'), 2)}x",)),
            Row(
                "test accuracy",
                (
                    f"{_pct(chosen.get('test_accuracy'))} (final exit alone "
                    f"{_pct(pareto.get('final_exit_test_accuracy'))})",
                ),
            ),
            Row("what keeps it from being faster", (str(chosen.get("active_bound", "-")),)),
        )
        rows = [
            Row(
                "chosen (early exits)",
                (
                    _n(chosen.get("fps")),
                    _pct(chosen.get("val_accuracy")),
                    *_resources(chosen),
                    _n(chosen.get("mean_latency_us"), 1),
                ),
            ),
            Row(
                "best without early exits",
                (
                    _n(no_exit.get("fps")),
                    _pct(no_exit.get("val_accuracy")),
                    *_resources(no_exit),
                    _n(no_exit.get("mean_latency_us"), 1),
                ),
            ),
        ]
        if finn:
            rows.append(
                Row(
                    "FINN SetFolding, no exits",
                    (
                        _n(finn.get("fps")),
                        _pct(no_exit.get("val_accuracy")),
                        *_resources(finn),
                        "-",
                    ),
                )
            )
        r.compare = tuple(rows)
        stage_rows = [Row(f"stage {k}", _resources(s)) for k, s in enumerate(chosen.get("stage_resources", []))]
        stage_rows.append(Row("budget", _resources(budget)))
        r.stage_resources = tuple(stage_rows)
    else:
        r.not_run.append(NotRun("design search", "no sweep/pareto.json", f"exitflow sweep {d} --board {board}"))
    _collect_design(run_dir, r)

    # -- build
    if build:
        r.graphs = tuple(
            Row(
                g.get("name", "?"),
                (
                    g.get("kind", "?"),
                    *_resources(g),
                    _n(g.get("interval_cycles")),
                ),
            )
            for g in build.get("graphs", [])
        )
        bitfile = build.get("bitfile", {})
        if not (run_dir / "hw" / "deploy" / "exitflow.bit").is_file():
            missing = bitfile.get("missing") or []
            why = f"needs {' and '.join(missing)}, not on this machine" if missing else "not built yet"
            r.not_run.append(
                NotRun(
                    "bitfile (Vivado synthesis, place and route)",
                    why,
                    f"{bitfile.get('command', f'exitflow build {d}')}   "
                    f"# on a machine with {bitfile.get('tools', 'Vivado and Vitis HLS')}",
                )
            )
            r.not_run.append(
                NotRun(
                    "run on a PYNQ board",
                    "no bitfile",
                    "copy hw/deploy/ and hw/driver.json to the board, then "
                    "ExitflowAccelerator('exitflow.bit', 'driver.json').run(images)",
                )
            )
    else:
        r.not_run.append(NotRun("hardware build", "no hw/build.json", f"exitflow build {d}"))

    # -- cosim
    if cosim:
        engines = cosim.get("engines", {})
        verdict = "bit-exact" if cosim.get("bit_exact") else f"{cosim.get('mismatch_count')} samples differ"
        r.cosim = (
            Row("verdict", (verdict,)),
            Row("test samples", (_n(cosim.get("samples")),)),
            *(
                Row(
                    f"engine {name}",
                    (
                        f"{_n(e.get('samples'))} samples, {_n(e.get('images_per_s'))} images/s, "
                        f"{_n(e.get('matches_model'))} equal to the model",
                    ),
                )
                for name, e in engines.items()
            ),
        )
        fractions = cosim.get("exit_fractions", {})
        exits = cosim.get("exits", [])
        r.fractions = tuple(
            Row(label, tuple(_pct(v, 1) for v in values))
            for label, values in (
                ("measured (hardware)", fractions.get("measured")),
                ("model", fractions.get("model")),
                ("predicted by the search", fractions.get("predicted")),
            )
            if values
        ) + (Row("exits", tuple(exits)),)
        cycle = cosim.get("cycle")
        if cycle:
            r.cycle = (
                Row("simulated throughput", (f"{_n(cycle.get('simulated_fps'), 1)} samples/s",)),
                Row("predicted by the dse model", (f"{_n(cycle.get('predicted_fps'), 1)} samples/s",)),
                Row("simulated / predicted", (_n(cycle.get("ratio"), 3),)),
                Row("cycles per sample", (_n(cycle.get("cycles_per_sample"), 1),)),
            )
            r.latency = tuple(
                Row(
                    str(lat.get("name")),
                    (
                        _n(lat.get("samples")),
                        _n(lat.get("mean_us"), 2),
                        _n(lat.get("p99_us"), 2),
                        _n(lat.get("unloaded_us"), 2),
                    ),
                )
                for lat in cycle.get("latency", [])
            )
        else:
            r.not_run.append(
                NotRun(
                    "cycle-level simulation", "cosim/report.json has no cycle section", f"exitflow cosim {d} --cycle"
                )
            )
    else:
        r.not_run.append(NotRun("cosimulation", "no cosim/report.json", f"exitflow cosim {d} --cycle"))
    if not (run_dir / "model.pt").is_file():
        r.not_run.insert(
            0, NotRun("training", "no model.pt", f"exitflow run --out {d}   # or: exitflow train CONFIG --out {d}")
        )
    return r


def _collect_design(run_dir: Path, r: ReportData) -> None:
    path = run_dir / "sweep" / "design.yaml"
    if not path.is_file():
        if (run_dir / "sweep" / "pareto.json").is_file():
            r.problems.append("sweep/design.yaml: missing; the chosen design's folding is left out")
        return
    try:
        design = load_design(path)
    except ConfigError as err:
        r.problems.append(f"sweep/design.yaml: {err}")
        return

    def folding(table, prefix: str = "") -> tuple[Row, ...]:
        return tuple(
            Row(prefix + layer, (str(f.pe), str(f.simd), f.ram_style, f.res_type, f.buffer_style))
            for layer, f in table.items()
        )

    r.design_note = f"model {design.model}, board {design.board}, clock {design.clock_mhz or 'the board default'} MHz"
    r.stages = tuple(
        StageView(
            s.name,
            ", ".join(s.blocks),
            s.head.name,
            s.head.policy,
            "-" if s.head.threshold is None else f"{s.head.threshold:g}",
            "-" if s.gate_depth is None else str(s.gate_depth),
            folding(s.folding) + folding(s.head.folding, prefix=f"{s.head.name}: "),
        )
        for s in design.stages
    )


def render(data: ReportData) -> str:
    env = template_env(TEMPLATE.parent, autoescape=True, keep_trailing_newline=False)
    return env.get_template(TEMPLATE.name).render(r=data)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from what ``run_dir`` holds; returns its path."""
    data = collect(run_dir)
    html = render(data)
    return atomic_write(user_path(run_dir) / REPORT_FILE, lambda tmp: tmp.write_text(html, encoding="utf-8"))


__all__ = ["REPORT_FILE", "TEMPLATE", "NotRun", "ReportData", "collect", "render", "write_report"]
