"""`families`: every built-in backbone end to end on Pynq-Z2, one JSON line each: lenet, cnv,
resnet8 (MLPerf Tiny's ResNet-8) and mobilenet (MobileNet-v1 style), on mnist5k (padded to
3x32x32 where the backbone needs it: no CIFAR-10 ships here).

Per backbone: training seconds, the final exit's test accuracy, the design the sweep chooses at a
1 pp floor (its exits among the candidates, its gain over the best design without early exits
with its finite gates on validation and on test traffic, the LUT share a multi-exit design needs
to match the no-exit throughput, the bound that keeps it from being faster), the sweep's seconds
and the process's peak memory after it, then the chosen design built, cosimulated (bit-exact or
not, on the whole test split) and simulated cycle by cycle (simulated over predicted throughput).

``mac_bound`` is the gain the backbone's MAC split allows for the chosen earliest exit: all MACs
over the MACs up to that exit (were every sample to leave there and resources follow MACs);
``gain_over_mac_bound`` says how close the design comes. Targets: resnet8 and mobilenet reach 2.0x
at 1 pp and are bit-exact. EXITFLOW_DSE_EPOCHS shortens training (every model but lenet),
EXITFLOW_DSE_RUNS keeps trained runs for the next invocation, EXITFLOW_FAMILIES picks backbones
(comma-separated).
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dse_common import MODELS, private_sweep, swept  # noqa: E402

DROP_PP = 1.0
BACKBONES = tuple(os.environ.get("EXITFLOW_FAMILIES", "lenet,cnv,resnet8,mobilenet").split(","))


def macs_per_block(model) -> dict[str, int]:
    """Multiply-accumulates of one sample per backbone block, in block order (hooks on every
    convolution and linear layer of a built-in MultiExitNet)."""
    import torch
    from brevitas.nn import QuantConv2d, QuantLinear

    counts: dict[str, int] = {}
    handles = []
    for block, module in model.blocks.items():
        for layer in module.modules():
            if isinstance(layer, (QuantConv2d, QuantLinear)):

                def hook(m, args, out, block=block):
                    value = out.value if hasattr(out, "value") else out
                    if isinstance(m, QuantConv2d):
                        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
                        macs = k * value.shape[1] * value.shape[2] * value.shape[3]
                    else:
                        macs = m.in_features * m.out_features
                    counts[block] = counts.get(block, 0) + int(macs)

                handles.append(layer.register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *model.input_shape))
    for h in handles:
        h.remove()
    return {b: counts.get(b, 0) for b in model.blocks}


def run() -> list[dict]:
    from exitflow.cosim import cosimulate
    from exitflow.dse.throughput import simulate_design
    from exitflow.hw.build import build
    from exitflow.quant import checkpoint as ckpt

    root = Path(tempfile.mkdtemp(prefix="exitflow_bench_families_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rows = []
    for backbone in BACKBONES:
        _, train_s = swept(backbone, DROP_PP)  # trains and profiles once per process
        run, result, sweep_s = private_sweep(backbone, DROP_PP, root)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        design = run / "sweep" / "design.yaml"
        build(run, design, log=lambda line: None, vivado_project=None)
        report = cosimulate(run, design, engine="vectorised")
        cycle = simulate_design(run, design, report.engines[0].results.exit)
        _, model, _ = ckpt.load_model(run)
        macs = macs_per_block(model)
        chosen = list(result.report.chosen.exits)
        earliest = chosen[0] if chosen else None
        blocks = list(macs)
        before = sum(macs[b] for b in blocks[: blocks.index(earliest) + 1]) if earliest else sum(macs.values())
        bound = sum(macs.values()) / before
        rows.append(
            {
                "model": backbone,
                "board": "Pynq-Z2",
                "data": MODELS[backbone]["data"],
                "train_s": round(train_s, 1) if train_s is not None else None,
                "final_exit_test_accuracy": round(result.final_test_accuracy, 4),
                "candidate_exits": list(model.exit_names[:-1]),
                "exits_1pp": chosen,
                "gain_at_1pp": round(result.gain_with_gates, 3),
                "gain_at_1pp_on_test_traffic": round(result.fps_with_gates_test / result.no_exit.fps, 3),
                "test_drop_pp_at_1pp": round(100 * (result.final_test_accuracy - result.test_accuracy), 2),
                "lut_fraction_at_equal_throughput": (
                    round(result.equal_throughput.resources.lut / result.no_exit.resources.lut, 3)
                    if result.equal_throughput is not None
                    else None
                ),
                "active_bound": result.bound,
                "fifo_lut": (
                    round(sum(f.lut for f in result.report.chosen.stage_fifos))
                    if result.report.chosen.stage_fifos is not None
                    else None
                ),
                "sweep_s": round(sweep_s, 1),
                "peak_mb_after_sweep": round(peak_mb),
                "cosim": "bit-exact" if report.bit_exact else f"{report.mismatch_count} mismatches",
                "cosim_samples": report.samples,
                "cycle_ratio": round(cycle.ratio, 4),
                "macs": sum(macs.values()),
                "mac_bound": round(bound, 2),
                "gain_over_mac_bound": round(result.gain_with_gates / bound, 3),
            }
        )
    return rows
