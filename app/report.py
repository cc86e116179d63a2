"""``DIR/report.html``: one self-contained page about a run folder.

Everything comes from the files in the folder (``run.json``, ``config.yaml``, ``profile.json``,
``profile.png``, ``sweep/``, ``hw/build.json``, ``cosim/report.json``); the images are embedded
as base64 ``data:`` URIs, so the file has no external reference and reads offline. A part that is
missing (or unreadable) is listed under "What was not run" with the command that would make it;
``exitflow report DIR`` never fails on a partial folder.

:func:`collect` fills :class:`ReportData` one section of the page at a time, each ``_collect_*``
function reading its own files through :class:`~exitflow.core.artifacts.RunDir`.
``sweep/pareto.json`` and ``hw/build.json`` are read through their dataclasses
(:class:`~exitflow.core.artifacts.ParetoReport`, :class:`~exitflow.core.artifacts.BuildSummary`)
with the strict schema loader: a file it refuses is listed among the problems and its section
left out. ``run.json``, ``profile.json`` and ``cosim/report.json`` are read as plain JSON,
tolerating missing keys.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from exitflow.core.artifacts import BuildSummary, DesignPoint, ParetoReport, RunDir
from exitflow.core.catalogue import DEFAULT_BOARD
from exitflow.core.design import load_design
from exitflow.core.errors import ConfigError
from exitflow.core.files import atomic_write
from exitflow.core.resources import NAMES, Resources
from exitflow.core.schema import load_json_file, read_json
from exitflow.core.templates import template_env
from exitflow.cosim.thresholds import ThresholdModel
from exitflow.hw.build import backup_of, is_finished

TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"
REPORT_FILE = "report.html"

T = TypeVar("T")


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
    thresholds: tuple[Row, ...] = ()  # run-time thresholds: one row per setting, header row first
    not_run: list[NotRun] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # files that exist but could not be read


# ---------------------------------------------------------------------------- reading the files


#: How the report ends the line of a file it cannot use.
_LEFT_OUT = "the part it holds is left out"


def _read_json(path: Path, problems: list[str]) -> dict | None:
    """A JSON object from ``path``; None when it is missing, or (listed in ``problems``) when it
    cannot be read or holds something else than an object."""
    if not path.is_file():
        return None
    try:
        data = read_json(path, _LEFT_OUT, name=path.name)
    except ConfigError as err:
        problems.append(str(err))
        return None
    if not isinstance(data, dict):
        problems.append(f"{path.name}: not a JSON object; {_LEFT_OUT}")
        return None
    return data


def _read_artifact(cls: type[T], path: Path, problems: list[str]) -> T | None:
    """``path`` read through its dataclass ``cls`` with the strict schema loader; None when it is
    missing, or (listed in ``problems``) when it is unreadable or holds what the schema refuses."""
    if not path.is_file():
        return None
    try:
        return load_json_file(cls, path, _LEFT_OUT, name=path.name)
    except ConfigError as err:
        problems.append(str(err))
        return None


def _figure(path: Path, title: str, caption: str, run: RunDir) -> Figure | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return Figure(
        title, caption, str(path.relative_to(run.root)), "data:image/png;base64," + base64.b64encode(raw).decode()
    )


# ---------------------------------------------------------------------------- formatting


def _n(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


#: The resources the report's tables show (URAM left out: the PYNQ boards' designs use none).
SHOWN = tuple(name for name in NAMES if name != "uram")


def _resources(resources: Resources) -> tuple[str, ...]:
    """LUT, BRAM18 and DSP of a design, a graph or a budget, formatted for a table."""
    return tuple(_n(getattr(resources, name)) for name in SHOWN)


def _pct(value, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f} %"


# ---------------------------------------------------------------------------- the report, section by section


def collect(run_dir: str | Path) -> ReportData:
    """What the report shows, read from ``run_dir``."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise ConfigError(f"{run}: no such run folder; run `exitflow run --out {run}` first")
    r = ReportData(run_dir=str(run.root.resolve()), generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    record = _read_json(run.run_record, r.problems) or {}
    pareto = _read_artifact(ParetoReport, run.pareto, r.problems)  # the sweep's section, and the board
    board = record.get("board") or (pareto.board if pareto is not None else None) or DEFAULT_BOARD
    _collect_settings(run, record, board, r)
    _collect_figures(run, r)
    _collect_profile(run, r)
    _collect_sweep(run, pareto, board, r)
    _collect_build(run, r)
    _collect_thresholds(run, r)
    _collect_cosim(run, r)
    _collect_design(run, r)  # its problems follow those of the JSON files
    _collect_training(run, r)
    return r


def _collect_settings(run: RunDir, record: dict, board: str, r: ReportData) -> None:
    """The run folder, the board and the configuration, and the steps ``run.json`` records."""
    settings = [Row("run folder", (r.run_dir,)), Row("board", (board,))]
    config_text = record.get("config")
    if config_text is None and run.config.is_file():
        config_text = run.config.read_text()
    if config_text:
        settings.append(Row("config", (config_text.strip(),)))
    r.settings = tuple(settings)
    steps = record.get("steps") if isinstance(record.get("steps"), dict) else {}
    r.steps = tuple(
        Row(name, (_n(rec.get("seconds"), 1), str(rec.get("summary", "")), str(rec.get("finished", ""))))
        for name, rec in steps.items()
        if isinstance(rec, dict)
    )


def _collect_figures(run: RunDir, r: ReportData) -> None:
    """The plots of the profile and the sweep, those that are there and are PNG files."""
    for key, path, title, caption in (
        (
            "pareto",
            run.sweep / "pareto.png",
            "Pareto front",
            "Throughput against validation accuracy of the designs on the front, those that keep the accuracy floor "
            "(colour: LUT), the chosen design, "
            "the best design without early exits and FINN's SetFolding without exits, under the same budget.",
        ),
        (
            "profile",
            run.profile_plot,
            "Exit rate and accuracy against the threshold",
            "Per exit, on the test split: the share of samples that would leave at a max_prob threshold, and the "
            "accuracy of those that do.",
        ),
        (
            "resources",
            run.sweep / "resources.png",
            "Resources per stage against the board budget",
            "LUT, BRAM18 and DSP of each stage of the chosen design (with its head) and of the best design "
            "without exits; the dashed line is the budget after the PYNQ shell and the utilisation cap.",
        ),
    ):
        fig = _figure(path, title, caption, run)
        if fig is not None:
            r.figures[key] = fig


def _collect_profile(run: RunDir, r: ReportData) -> None:
    """Each exit's test accuracy from ``profile.json`` (after :func:`_collect_figures`: a missing
    plot of a profiled run is listed as not run)."""
    profile = _read_json(run.profile_summary, r.problems)
    if profile:
        test = profile.get("splits", {}).get("test", {})
        r.exit_accuracy = tuple(Row(name, (_pct(acc),)) for name, acc in test.get("accuracy", {}).items())
    else:
        r.not_run.append(NotRun("profile", "no profile.json", f"exitflow profile {run}"))
    if "profile" not in r.figures and profile:
        r.not_run.append(NotRun("exit-rate plot", "no profile.png", f"exitflow profile {run}"))


def _collect_sweep(run: RunDir, pareto: ParetoReport | None, board: str, r: ReportData) -> None:
    """The key numbers, the chosen design against both baselines and its stages' resources."""
    if pareto is None:
        r.not_run.append(NotRun("design search", "no sweep/pareto.json", f"exitflow sweep {run} --board {board}"))
        return
    chosen, no_exit, finn = pareto.chosen, pareto.no_exit_baseline, pareto.finn_setfolding_baseline
    r.headline = (
        Row(
            "chosen design",
            (f"exits {', '.join(chosen.exits) or 'none'}" + (f" ({chosen.policy})" if chosen.policy else ""),),
        ),
        Row("throughput (dse model)", (f"{_n(chosen.fps)} samples/s",)),
        Row("gain over the best design without exits", (f"{_n(pareto.gain_vs_no_exit, 2)}x",)),
        Row(
            "test accuracy",
            (f"{_pct(chosen.test_accuracy)} (final exit alone {_pct(pareto.final_exit_test_accuracy)})",),
        ),
        Row("accuracy floor", (_floor_text(pareto),)),
        Row("what keeps it from being faster", (chosen.active_bound,)),
    )
    rows = [
        Row("chosen (early exits)", _compare_cells(chosen)),
        Row("best without early exits", _compare_cells(no_exit)),
    ]
    if finn is not None:  # same model, so the no-exit design's accuracy
        rows.append(
            Row(
                "FINN SetFolding, no exits",
                (_n(finn.fps), _pct(no_exit.val_accuracy), *_resources(finn.resources), "-"),
            )
        )
    r.compare = tuple(rows)
    r.stage_resources = (
        *(Row(f"stage {k}", _resources(s)) for k, s in enumerate(chosen.stage_resources)),
        Row("budget", _resources(pareto.budget)),
    )


def _floor_text(pareto: ParetoReport) -> str:
    """How the chosen design keeps the accuracy floor (certified, or met on validation), with its
    drops on both splits."""
    chosen, cert = pareto.chosen, pareto.certificate
    if chosen.val_drop_pp is None:  # a pareto.json from before the certificate
        return "met on the validation split"
    drops = f"drop {chosen.val_drop_pp:.2f} pp on validation, {chosen.test_drop_pp:.2f} pp on test"
    if cert is None:
        return f"met on the validation split (a point estimate); {drops}"
    how = "no early exits, no test needed" if not chosen.exits else f"p = {chosen.p_value:.3f}"
    return f"{cert.floor}, certified at confidence {cert.confidence:g} ({how}); {drops}"


def _compare_cells(point: DesignPoint) -> tuple[str, ...]:
    """Throughput, validation accuracy, resources and mean latency of a design of the search."""
    return (_n(point.fps), _pct(point.val_accuracy), *_resources(point.resources), _n(point.mean_latency_us, 1))


def _read_build(run: RunDir, problems: list[str]) -> BuildSummary | None:
    """``hw/build.json``, or, while ``hw/`` holds an interrupted build, the last finished build's
    from its backup (saying so in ``problems``)."""
    build = _read_artifact(BuildSummary, run.build_summary, problems)
    backup = backup_of(run.hw)
    if build is None and is_finished(backup):
        problems.append(
            f"hw/ holds an interrupted build; the build shown is the last finished one, which waits in "
            f"{backup} (`exitflow cosim {run}` or `exitflow build {run}` puts it back)"
        )
        build = _read_artifact(BuildSummary, backup / BuildSummary.FILE, problems)
    return build


def _collect_build(run: RunDir, r: ReportData) -> None:
    """The built graphs, and what the bitfile and the board still need."""
    build = _read_build(run, r.problems)
    if build is None:
        r.not_run.append(NotRun("hardware build", "no hw/build.json", f"exitflow build {run}"))
        return
    r.graphs = tuple(Row(g.name, (g.kind, *_resources(g.resources), _n(g.interval_cycles))) for g in build.graphs)
    if (run.hw / "deploy" / "exitflow.bit").is_file():
        return
    bitfile = build.bitfile
    why = f"needs {' and '.join(bitfile.missing)}, not on this machine" if bitfile.missing else "not built yet"
    r.not_run.append(
        NotRun(
            "bitfile (Vivado synthesis, place and route)",
            why,
            f"{bitfile.command}   # on a machine with {bitfile.tools}",
        )
    )
    r.not_run.append(
        NotRun(
            "run on a PYNQ board",
            "no bitfile",
            "copy hw/deploy/, hw/driver.json and hw/driver.npz to the board, then "
            "ExitflowAccelerator('exitflow.bit', 'driver.json').run(images)",
        )
    )


RUN_TIME_THRESHOLDS = (0.6, 0.8, 0.9, 0.95, 0.99)  # set at once on every max_prob / agreement exit


def _collect_thresholds(run: RunDir, r: ReportData) -> None:
    """What the built design does with other thresholds in its CTU registers (``exitflow
    predict``): the design's, then each of :data:`RUN_TIME_THRESHOLDS` on every exit whose policy
    has a threshold in (0, 1]."""
    if not run.driver.with_suffix(".npz").is_file() or not is_finished(run.hw):
        return
    try:
        model = ThresholdModel.load(run.driver)
    except ConfigError as err:
        r.problems.append(f"{err} ({_LEFT_OUT})")
        return
    probability = [e.name for e in model.exits if e.policy in ("max_prob", "agreement")]
    if not probability:
        return
    settings = [("the design's", {})] + [
        (f"{t:g} on {', '.join(probability)}", dict.fromkeys(probability, t)) for t in RUN_TIME_THRESHOLDS
    ]
    rows = []
    for label, changes in settings:
        p = model.predict(changes)
        rows.append(
            Row(
                label,
                (
                    *(_pct(f, 1) for f in p.fractions),
                    _pct(p.accuracy),
                    f"{_n(p.fps)}",
                    p.pace + (" (new)" if p.warnings else ""),
                ),
            )
        )
    r.thresholds = (Row("exits", tuple(model.thresholds()) + (model.final,)), *rows)


def _collect_cosim(run: RunDir, r: ReportData) -> None:
    """The verdict of ``cosim/report.json``, its engines and exit fractions, and its cycle section."""
    cosim = _read_json(run.cosim_report, r.problems)
    if not cosim:
        r.not_run.append(NotRun("cosimulation", "no cosim/report.json", f"exitflow cosim {run} --cycle"))
        return
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
    r.fractions = tuple(
        Row(label, tuple(_pct(v, 1) for v in values))
        for label, values in (
            ("measured (hardware)", fractions.get("measured")),
            ("model", fractions.get("model")),
            ("predicted by the search", fractions.get("predicted")),
        )
        if values
    ) + (Row("exits", tuple(cosim.get("exits", []))),)
    cycle = cosim.get("cycle")
    if not cycle:
        r.not_run.append(
            NotRun("cycle-level simulation", "cosim/report.json has no cycle section", f"exitflow cosim {run} --cycle")
        )
        return
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


def _collect_design(run: RunDir, r: ReportData) -> None:
    """The chosen design's stages and folding, from ``sweep/design.yaml``."""
    if not run.design.is_file():
        if run.pareto.is_file():
            r.problems.append("sweep/design.yaml: missing; the chosen design's folding is left out")
        return
    try:
        design = load_design(run.design)
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


def _collect_training(run: RunDir, r: ReportData) -> None:
    """Training comes first among what was not run."""
    if not run.model.is_file():
        r.not_run.insert(
            0, NotRun("training", "no model.pt", f"exitflow run --out {run}   # or: exitflow train CONFIG --out {run}")
        )


def render(data: ReportData) -> str:
    env = template_env(TEMPLATE.parent, autoescape=True, keep_trailing_newline=False)
    return env.get_template(TEMPLATE.name).render(r=data)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) from what ``run_dir`` holds; returns its path."""
    data = collect(run_dir)
    html = render(data)
    return atomic_write(RunDir(run_dir).report, lambda tmp: tmp.write_text(html, encoding="utf-8"))


__all__ = ["REPORT_FILE", "TEMPLATE", "NotRun", "ReportData", "collect", "render", "write_report"]
