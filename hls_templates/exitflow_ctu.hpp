// exitflow confidence-threshold unit (CTU): integer logits in, one decision record out.
//
// Standalone HLS C++ (ap_int.h, hls_stream.h only). One definition with exitflow.quant.policies:
//   max_prob: code = sum_j ROM[(z_max - z_j) >> ROM_SHIFT] (ROM[i] = round(exp(-s*(i << ROM_SHIFT))
//             * 2^FRAC_BITS), 0 beyond ROM_DEPTH); exit when code <= THRESHOLD.
//   margin:   code = z_top1 - z_top2; exit when code >= THRESHOLD.
//   agreement: max_prob's code, and exit when code <= THRESHOLD and the class equals the class
//             the sample had at the previous kept exit (one word per sample on a second input
//             stream, sent by the gate before this stage). At the first kept exit there is no
//             previous class: that unit is ctu_max_prob.
// The class is the first index of the largest logit (strict '>' scan). No divider, no float,
// no multiplier. Record, LSB first: code [CODE_BITS], class [CLASS_BITS], exit [1].
//
// Run-time threshold: every unit takes the design's constant (THRESHOLD, compiled in) and a
// register word of CODE_BITS + 1 bits (an early exit's AXI-lite `threshold`; the final exit has
// none and passes 0). Bit CODE_BITS is the override bit: the unit compares with
// reg[CODE_BITS] ? reg(CODE_BITS - 1, 0) : THRESHOLD, so register 0 (after reset) is the
// design's behaviour. The register is read once per sample, when that sample's processing starts.
#ifndef EXITFLOW_CTU_HPP
#define EXITFLOW_CTU_HPP

#include <ap_int.h>
#include <hls_stream.h>

namespace exitflow {

template <unsigned CLASS_BITS, unsigned CODE_BITS>
ap_uint<1 + CLASS_BITS + CODE_BITS> ctu_record(bool leave, unsigned cls, ap_uint<CODE_BITS> code) {
#pragma HLS INLINE
    ap_uint<1 + CLASS_BITS + CODE_BITS> r = 0;
    r(CODE_BITS - 1, 0) = code;
    r(CODE_BITS + CLASS_BITS - 1, CODE_BITS) = cls;
    r[CODE_BITS + CLASS_BITS] = leave;
    return r;
}

// The threshold a unit compares with: the register's code when its override bit (bit CODE_BITS)
// is set, else the design's constant.
template <unsigned CODE_BITS>
ap_uint<CODE_BITS> threshold_in_use(const ap_uint<CODE_BITS + 1> reg, const ap_uint<CODE_BITS> design) {
#pragma HLS INLINE
    return reg[CODE_BITS] ? ap_uint<CODE_BITS>(reg(CODE_BITS - 1, 0)) : design;
}

// max_prob's code of one sample: pass 1 reads the logits (PE per cycle) and finds the maximum,
// pass 2 adds the ROM terms (one class per cycle).
template <unsigned CLASSES, unsigned PE, unsigned LOGIT_BITS, unsigned FRAC_BITS, unsigned ROM_DEPTH,
          unsigned ROM_SHIFT, unsigned CODE_BITS>
void max_prob_code(hls::stream<ap_uint<PE * LOGIT_BITS>> &in, const ap_uint<FRAC_BITS + 1> rom[ROM_DEPTH],
                   unsigned &cls, ap_uint<CODE_BITS> &code) {
#pragma HLS INLINE
    static_assert(CLASSES % PE == 0, "PE must divide CLASSES");
    ap_int<LOGIT_BITS> z[CLASSES];
    ap_int<LOGIT_BITS> top = 0;
    cls = 0;
read_logits:
    for (unsigned f = 0; f < CLASSES / PE; f++) {
#pragma HLS PIPELINE II = 1
        const ap_uint<PE * LOGIT_BITS> word = in.read();
        for (unsigned p = 0; p < PE; p++) {
#pragma HLS UNROLL
            const unsigned j = f * PE + p;
            const ap_int<LOGIT_BITS> v = word((p + 1) * LOGIT_BITS - 1, p * LOGIT_BITS);
            z[j] = v;
            if (j == 0 || v > top) {
                top = v;
                cls = j;
            }
        }
    }
    code = 0;
add_rom_terms:
    for (unsigned j = 0; j < CLASSES; j++) {
#pragma HLS PIPELINE II = 1
        const ap_uint<LOGIT_BITS> d = ap_uint<LOGIT_BITS>(ap_int<LOGIT_BITS + 1>(top) - ap_int<LOGIT_BITS + 1>(z[j])) >> ROM_SHIFT;
        code += (d < ROM_DEPTH) ? ap_uint<FRAC_BITS + 1>(rom[d]) : ap_uint<FRAC_BITS + 1>(0);
    }
}

// max_prob (and agreement at the first kept exit). Under DATAFLOW across samples, one sample
// every CLASSES cycles.
template <unsigned CLASSES, unsigned PE, unsigned LOGIT_BITS, unsigned FRAC_BITS, unsigned ROM_DEPTH,
          unsigned ROM_SHIFT, unsigned CLASS_BITS, unsigned CODE_BITS>
void ctu_max_prob(hls::stream<ap_uint<PE * LOGIT_BITS>> &in,
                  hls::stream<ap_uint<1 + CLASS_BITS + CODE_BITS>> &out,
                  const ap_uint<FRAC_BITS + 1> rom[ROM_DEPTH], const ap_uint<CODE_BITS> design,
                  const ap_uint<CODE_BITS + 1> reg, const unsigned samples) {
    for (unsigned s = 0; s < samples; s++) {
        const ap_uint<CODE_BITS> threshold = threshold_in_use<CODE_BITS>(reg, design);
        unsigned cls;
        ap_uint<CODE_BITS> code;
        max_prob_code<CLASSES, PE, LOGIT_BITS, FRAC_BITS, ROM_DEPTH, ROM_SHIFT, CODE_BITS>(in, rom, cls, code);
        out.write(ctu_record<CLASS_BITS, CODE_BITS>(code <= threshold, cls, code));
    }
}

// agreement after the first kept exit: max_prob's code and test, and the class the sample had at
// the previous kept exit (`previous`, one word per sample, read once its logits are in) must be
// this exit's class. One sample every CLASSES cycles, as max_prob.
template <unsigned CLASSES, unsigned PE, unsigned LOGIT_BITS, unsigned FRAC_BITS, unsigned ROM_DEPTH,
          unsigned ROM_SHIFT, unsigned CLASS_BITS, unsigned CODE_BITS>
void ctu_agreement(hls::stream<ap_uint<PE * LOGIT_BITS>> &in, hls::stream<ap_uint<CLASS_BITS>> &previous,
                   hls::stream<ap_uint<1 + CLASS_BITS + CODE_BITS>> &out,
                   const ap_uint<FRAC_BITS + 1> rom[ROM_DEPTH], const ap_uint<CODE_BITS> design,
                   const ap_uint<CODE_BITS + 1> reg, const unsigned samples) {
    for (unsigned s = 0; s < samples; s++) {
        const ap_uint<CODE_BITS> threshold = threshold_in_use<CODE_BITS>(reg, design);
        unsigned cls;
        ap_uint<CODE_BITS> code;
        max_prob_code<CLASSES, PE, LOGIT_BITS, FRAC_BITS, ROM_DEPTH, ROM_SHIFT, CODE_BITS>(in, rom, cls, code);
        const ap_uint<CLASS_BITS> before = previous.read();
        out.write(ctu_record<CLASS_BITS, CODE_BITS>(code <= threshold && before == ap_uint<CLASS_BITS>(cls), cls, code));
    }
}

// margin: one pass keeps the top two logits; one sample every CLASSES / PE cycles.
template <unsigned CLASSES, unsigned PE, unsigned LOGIT_BITS, unsigned CLASS_BITS, unsigned CODE_BITS>
void ctu_margin(hls::stream<ap_uint<PE * LOGIT_BITS>> &in,
                hls::stream<ap_uint<1 + CLASS_BITS + CODE_BITS>> &out,
                const ap_uint<CODE_BITS> design, const ap_uint<CODE_BITS + 1> reg, const unsigned samples) {
    static_assert(CLASSES % PE == 0, "PE must divide CLASSES");
    for (unsigned s = 0; s < samples; s++) {
        const ap_uint<CODE_BITS> threshold = threshold_in_use<CODE_BITS>(reg, design);
        ap_int<LOGIT_BITS> top1 = 0, top2 = 0;
        unsigned cls = 0;
    read_logits:
        for (unsigned f = 0; f < CLASSES / PE; f++) {
#pragma HLS PIPELINE II = 1
            const ap_uint<PE * LOGIT_BITS> word = in.read();
            for (unsigned p = 0; p < PE; p++) {
#pragma HLS UNROLL
                const unsigned j = f * PE + p;
                const ap_int<LOGIT_BITS> v = word((p + 1) * LOGIT_BITS - 1, p * LOGIT_BITS);
                if (j == 0) {
                    top1 = v;
                    cls = 0;
                } else if (v > top1) {
                    top2 = top1;
                    top1 = v;
                    cls = j;
                } else if (j == 1 || v > top2) {
                    top2 = v;
                }
            }
        }
        const ap_uint<CODE_BITS> code = ap_int<LOGIT_BITS + 1>(top1) - ap_int<LOGIT_BITS + 1>(top2);
        out.write(ctu_record<CLASS_BITS, CODE_BITS>(code >= threshold, cls, code));
    }
}

}  // namespace exitflow

#endif
