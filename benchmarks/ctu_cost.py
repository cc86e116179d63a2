"""`ctu_cost`: resources of exitflow's confidence-threshold unit for 10 classes and 8-bit
logits, per policy, from the unit's own estimate (derivation: hls_templates/README.md), next
to ATHEENA's decision layer (about 1,818 LUT, 1,498 FF and 8 DSP for 10 classes).

An early exit's unit has a run-time threshold register on an AXI-lite port; each row gives the
unit with it (``lut``, ``ff``: what the design search and FINN's estimates count), without it
(``lut_no_register``, ``ff_no_register``: the datapath alone, as the final exit's unit) and the
register's share (``register_lut``, ``register_ff``).

The logit scale is 1/16 (8-bit logits spanning +-8 in real units): the max_prob ROM then has
one word per difference up to where exp(-d/16) rounds to 0 at 10 fraction bits.
Targets: LUT <= 350, DSP 0, BRAM18 <= 1, at most one cycle per class.
"""

from __future__ import annotations

ATHEENA = {"lut": 1818, "ff": 1498, "dsp": 8}


def run() -> list[dict]:
    from exitflow.hls_templates.ctu import CTUParams

    rows = []
    for policy in ("max_prob", "margin"):
        p = CTUParams(
            policy=policy, classes=10, logit_bits=8, scale=1 / 16, threshold=0.9 if policy == "max_prob" else 1.0
        )
        rows.append(
            {
                "classes": p.classes,
                "logit_bits": p.logit_bits,
                "policy": policy,
                "lut": p.lut(),
                "ff": p.ff(),
                "lut_no_register": p.lut() - p.register_lut(),
                "ff_no_register": p.ff() - p.register_ff(),
                "register_lut": p.register_lut(),
                "register_ff": p.register_ff(),
                "register_bits": p.register_bits,
                "dsp": p.dsp(),
                "bram18": p.bram18(),
                "cycles_per_sample": p.cycles_per_sample(),
                "rom_words": int(len(p.rom)),
                "lut_vs_atheena": round(p.lut() / ATHEENA["lut"], 3),
                "ff_vs_atheena": round(p.ff() / ATHEENA["ff"], 3),
            }
        )
    return rows
