"""The subcommands of ``exitflow`` but ``boards`` (:mod:`exitflow.app.cli` parses the command line,
handles errors and loads this module when one of them runs). Each is ``cmd_<name>(args) -> int``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from exitflow.app.report import write_report
from exitflow.app.run import RunSettings, load_config, run
from exitflow.boards.vivado import build_bitfile, build_with_project, missing_tools
from exitflow.core.errors import ConfigError, MismatchError
from exitflow.core.files import atomic_write, user_path
from exitflow.cosim import cosimulate
from exitflow.cosim.cycle import MIN_SAMPLES
from exitflow.dse.sweep import sweep
from exitflow.dse.throughput import simulate_design
from exitflow.hw.build import restore_build


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # a bad config fails before torch is imported

    # torch: deferred until the config is read, so a bad one is refused without loading it
    import torch

    from exitflow.quant.train import train

    torch.set_num_threads(max(1, args.threads))
    result = train(config, args.out)
    accuracy = ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.val_accuracy.items())
    print(f"trained {args.out}/model.pt ({result.epochs_run} epochs, {result.seconds:.0f} s); val accuracy: {accuracy}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    # torch: deferred to the commands that need it
    from exitflow.quant.profile import profile

    summary = profile(args.dir)
    test = summary["splits"]["test"]
    accuracy = ", ".join(f"{k} {100 * v:.2f}%" for k, v in test["accuracy"].items())
    table = test["max_prob"]["cascade"]
    drops = table["accuracy_drop_pp"]
    ok = [i for i, d in enumerate(drops) if d <= 0.5]
    print(f"wrote {args.dir}/profile.npz, profile.json, profile.png; test accuracy: {accuracy}")
    if ok:
        best = max(ok, key=lambda i: table["early_fraction"][i])
        t = test["max_prob"]["thresholds"][best]
        print(
            f"max_prob threshold {t} at every exit: {100 * table['early_fraction'][best]:.1f}% of test samples "
            f"leave early, accuracy {100 * table['accuracy'][best]:.2f}% ({drops[best]:+.2f} pp below the final exit)"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # torch: deferred to the commands that need it
    from exitflow.quant.export import export_run

    exits = [e for e in (args.exits or "").split(",") if e]
    manifest = export_run(args.dir, exits)
    files = ", ".join(f"{s.file}+{h.file}" for s, h in zip(manifest.stages, manifest.heads, strict=True))
    print(f"exported exits {', '.join(manifest.exits)} to {args.dir}/stages: {files}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    reports = build_with_project(args.dir, args.design)
    print(
        f"wrote {args.dir}/hw: {len(reports)} graphs through FINN code generation, "
        f"the Vivado project in {args.dir}/hw/vivado"
    )
    missing = missing_tools()
    if missing:
        design = args.design or f"{args.dir}/sweep/design.yaml"
        print(
            f"bitfile: needs {' and '.join(missing)} (not on PATH); on a machine with them run: "
            f"exitflow build {args.dir} --design {design}"
        )
        return 0
    print(f"bitfile: {build_bitfile(args.dir)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    r = sweep(
        args.dir,
        args.board,
        objective=args.objective,
        min_accuracy=args.min_accuracy,
        max_drop_pp=args.max_drop_pp,
        util=args.util,
        max_latency_us=args.max_latency_us,
        max_exits=args.max_exits,
    )
    c = r.chosen
    names = json.loads((Path(args.dir) / "sweep" / "pareto.json").read_text())["chosen"]["exits"]
    print(
        f"chosen: exits {', '.join(names) or 'none'} at thresholds {list(c.thresholds)}: "
        f"{r.fps_with_gates:,.0f} samples/s "
        f"with its gates of {r.gate_depth} feature maps ({c.fps:,.0f} with unbounded gates), "
        f"{r.gain_with_gates:.2f}x the best design without early exits ({r.no_exit.fps:,.0f}/s); "
        f"LUT {c.resources.lut:,.0f}, "
        f"BRAM18 {c.resources.bram18:.0f}, DSP {c.resources.dsp:.0f}, mean latency {c.mean_latency_us:.1f} us; "
        f"test accuracy {100 * r.test_accuracy:.2f}% "
        f"(final exit alone {100 * r.final_test_accuracy:.2f}%)"
    )
    if c.exits:
        print(
            f"on the test split's traffic: {r.fps_with_gates_test:,.0f} samples/s with its gates "
            f"({r.fps_with_gates_test / r.no_exit.fps:.2f}x)"
        )
    e = r.equal_throughput
    if e is not None:
        print(
            f"matching the no-exit throughput with its gates takes {e.resources.lut:,.0f} LUTs "
            f"({e.resources.lut / r.no_exit.resources.lut:.1%} of the no-exit design's)"
        )
    print(f"what keeps it from being faster: {r.bound}")
    print(
        f"wrote {args.dir}/sweep: pareto.json, pareto.png, resources.png, design.yaml "
        f"({len(r.front)} designs on the front)"
    )
    return 0


def cmd_cosim(args: argparse.Namespace) -> int:
    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"--samples: must be a positive number of test samples; got {args.samples}")
    if args.reference_samples < 1:
        raise ConfigError(f"--reference-samples: must be >= 1; got {args.reference_samples}")
    restore_build(user_path(args.dir) / "hw", log=lambda line: print(line, file=sys.stderr))
    bar = tqdm(desc="cosim", unit="sample", disable=not sys.stderr.isatty(), leave=False)
    try:
        report = cosimulate(
            args.dir, args.design, args.samples, args.engine, args.reference_samples, progress=bar.update
        )
    finally:
        bar.close()
    data = report.to_data()
    cycle = None
    if args.cycle:
        taken = report.engines[0].results.exit
        repeats = max(3, -(-MIN_SAMPLES // len(taken)))
        bar = tqdm(
            desc="cycle simulation",
            unit="sample",
            total=repeats * len(taken),
            disable=not sys.stderr.isatty(),
            leave=False,
        )
        try:
            cycle = simulate_design(args.dir, args.design, taken, progress=bar.update)
        finally:
            bar.close()
        data["cycle"] = cycle.to_data()
    path = f"{args.dir}/cosim/report.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))
    print(f"{report.summary()}; predicted {report.predicted_fractions}")
    if cycle is not None:
        print(cycle.summary())
    print(f"wrote {path}")
    if not report.bit_exact:
        raise MismatchError(
            f"{report.mismatch_count} of {report.samples} samples differ; first: "
            f"{report.mismatches[0].describe()} (all in {path})"
        )
    return 0


# ---------------------------------------------------------------------------- the whole flow


def cmd_run(args: argparse.Namespace) -> int:
    result = run(load_config(args.config), args.out, RunSettings(board=args.board), force=args.force)
    done = [s.name for s in result.steps if s.status == "done"]
    print(
        f"done in {result.seconds:.0f} s ({', '.join(done) or 'every step unchanged, nothing'} run now); "
        f"open {args.out}/report.html"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(f"wrote {write_report(args.dir)}")
    return 0
