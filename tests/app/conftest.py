"""A whole `exitflow run` of examples/lenet_digits.yaml, unchanged, interrupted once in the middle
of its build and then run again to the end: shared by tests/app/test_run.py and test_report.py."""

from dataclasses import dataclass
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lenet_digits.yaml"


@dataclass
class FinishedRun:
    out: Path
    config_path: Path
    records_after_interrupt: dict
    hw_after_interrupt: bool  # whether DIR/hw existed after the interrupt
    interrupted_after_graphs: int  # FINN graphs of the build finished before Ctrl-C
    resumed: list  # StepRecords of the second invocation
    log: list[str]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> FinishedRun:
    from exitflow.app.run import load_config, read_records, run
    from exitflow.hw import finn_flow

    out = tmp_path_factory.mktemp("flow") / "digits"
    config = load_config(EXAMPLE)
    real = finn_flow.run_flow
    built: list[Path] = []

    def interrupted(source, folder, state, *args, **kwargs):
        """FINN of the hardware build (DIR/hw, not the sweep's inventory): Ctrl-C after one graph."""
        if Path(folder).parent == out / "hw" and built:
            raise KeyboardInterrupt
        result = real(source, folder, state, *args, **kwargs)
        if Path(folder).parent == out / "hw":
            built.append(Path(folder))
        return result

    log: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finn_flow, "run_flow", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run(config, out, log=log.append)
    records = read_records(out)
    hw_after_interrupt = (out / "hw").exists()
    resumed = run(config, out, log=log.append)
    return FinishedRun(out, EXAMPLE, records, hw_after_interrupt, len(built), resumed.steps, log)
