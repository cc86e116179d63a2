"""The subcommands of ``exitflow`` but ``boards`` (:mod:`exitflow.app.cli` parses the command line,
handles errors and loads this module when one of them runs). Each is ``cmd_<name>(args) -> int``:
it checks its own options, calls the step in :mod:`exitflow.app.steps` that ``exitflow run`` calls
too, and lets it print its lines."""

from __future__ import annotations

import argparse
import json
import sys

from exitflow.app import steps
from exitflow.app.run import RunSettings, load_config, load_run_config, run
from exitflow.core.artifacts import RunDir
from exitflow.core.errors import ConfigError
from exitflow.hw.build import restore_build


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # a bad config fails before torch is imported (by steps.train)
    steps.train(config, args.out, args.threads, say=print)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    steps.profile(args.dir, say=print)
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
    steps.build(args.dir, args.design, say=print)
    return 0


def parse_thresholds(items: list[str] | None) -> dict[str, float | None]:
    """``--thresholds conv0=0.8 fc0=0.7`` (or ``conv0=0.8,fc0=0.7``); ``design`` as a value is the
    design's threshold."""
    out: dict[str, float | None] = {}
    for item in ",".join(items or []).split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ConfigError(f"--thresholds: expected EXIT=VALUE (e.g. conv0=0.8); got {item.strip()!r}")
        if name in out:
            raise ConfigError(f"--thresholds: exit {name} given twice")
        if value == "design":
            out[name] = None
            continue
        try:
            out[name] = float(value)
        except ValueError:
            raise ConfigError(f"--thresholds: {name}={value} is not a number (or `design`)") from None
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    prediction, design = steps.predict(args.dir, parse_thresholds(args.thresholds))
    if args.json:
        print(json.dumps(prediction.to_data(), indent=1))
    else:
        print("\n".join(prediction.lines(design)))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    steps.sweep(
        args.dir,
        args.board,
        say=print,
        objective=args.objective,
        min_accuracy=args.min_accuracy,
        max_drop_pp=args.max_drop_pp,
        confidence=args.confidence,
        policy=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
        util=args.util,
        max_latency_us=args.max_latency_us,
        max_exits=args.max_exits,
    )
    return 0


def cmd_cosim(args: argparse.Namespace) -> int:
    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"--samples: must be a positive number of test samples; got {args.samples}")
    if args.reference_samples < 1:
        raise ConfigError(f"--reference-samples: must be >= 1; got {args.reference_samples}")
    restore_build(RunDir(args.dir).hw, log=lambda line: print(line, file=sys.stderr))
    done = steps.cosim(
        args.dir,
        args.design,
        cycle=args.cycle,
        say=print,
        samples=args.samples,
        engine=args.engine,
        reference_samples=args.reference_samples,
    )
    if done.error is not None:
        raise done.error
    return 0


# ---------------------------------------------------------------------------- the whole flow


def cmd_run(args: argparse.Namespace) -> int:
    config, section = load_run_config(args.config)
    settings = RunSettings(board=args.board, confidence=args.confidence, max_exits=section.max_exits)
    result = run(config, args.out, settings, force=args.force)
    done = [s.name for s in result.steps if s.status == "done"]
    print(
        f"done in {result.seconds:.0f} s ({', '.join(done) or 'every step unchanged, nothing'} run now); "
        f"open {args.out}/report.html"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    steps.report(args.dir, say=print)
    return 0
