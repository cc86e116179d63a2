// exitflow gate, tag and merge: the routing of a multi-exit pipeline.
//
// gate:  per sample, reads its id, its CTU record and its feature map (FOLDS words). A sample
//        that exits is dropped from the feature-map path and leaves as a tagged record
//        (record, exit index, id) towards the merge; a sample that goes on is forwarded with its
//        id to the next stage. The feature-map FIFO in front of the gate (depth chosen by the
//        design) lets the stage run ahead while the head decides.
// gate_class: the gate before a head whose CTU uses agreement: as gate, and every sample that
//        goes on also sends its class (bits CLASS_LSB .. CLASS_LSB + CLASS_BITS - 1 of its CTU
//        record) on cls_out, in the order the samples go on. The stage and head between are
//        in-order streams, so the k-th class the next CTU reads is its k-th sample's.
// tag:   the final exit: every record leaves, tagged.
// merge: collects tagged records from EXITS streams, round robin, without blocking on an empty
//        one; records of one exit keep their order, across exits they may interleave (the
//        driver puts samples back in order by id).
// Tagged record, LSB first: id [ID_BITS], exit index [EXIT_BITS], CTU record [REC_BITS].
#ifndef EXITFLOW_GATE_HPP
#define EXITFLOW_GATE_HPP

#include <ap_int.h>
#include <hls_stream.h>

namespace exitflow {

template <unsigned ID_BITS, unsigned EXIT_BITS, unsigned REC_BITS>
ap_uint<ID_BITS + EXIT_BITS + REC_BITS> tagged(ap_uint<ID_BITS> id, unsigned exit_index, ap_uint<REC_BITS> rec) {
#pragma HLS INLINE
    ap_uint<ID_BITS + EXIT_BITS + REC_BITS> t = 0;
    t(ID_BITS - 1, 0) = id;
    t(ID_BITS + EXIT_BITS - 1, ID_BITS) = exit_index;
    t(ID_BITS + EXIT_BITS + REC_BITS - 1, ID_BITS + EXIT_BITS) = rec;
    return t;
}

// One feature map of FOLDS words: forwarded for a sample that goes on, read and dropped for one
// that leaves (shared by gate and gate_class).
template <unsigned FOLDS, unsigned FM_BITS>
void pass_or_drop(hls::stream<ap_uint<FM_BITS>> &fm_in, hls::stream<ap_uint<FM_BITS>> &fm_out, const bool leave) {
#pragma HLS INLINE
words:
    for (unsigned f = 0; f < FOLDS; f++) {
#pragma HLS PIPELINE II = 1
        const ap_uint<FM_BITS> word = fm_in.read();
        if (!leave) fm_out.write(word);
    }
}

template <unsigned FOLDS, unsigned FM_BITS, unsigned ID_BITS, unsigned EXIT_BITS, unsigned REC_BITS,
          unsigned EXIT_FLAG_BIT>
void gate(hls::stream<ap_uint<FM_BITS>> &fm_in, hls::stream<ap_uint<ID_BITS>> &id_in,
          hls::stream<ap_uint<REC_BITS>> &rec_in, hls::stream<ap_uint<FM_BITS>> &fm_out,
          hls::stream<ap_uint<ID_BITS>> &id_out, hls::stream<ap_uint<ID_BITS + EXIT_BITS + REC_BITS>> &exit_out,
          const unsigned exit_index, const unsigned samples) {
    for (unsigned s = 0; s < samples; s++) {
        const ap_uint<ID_BITS> id = id_in.read();
        const ap_uint<REC_BITS> rec = rec_in.read();
        const bool leave = rec[EXIT_FLAG_BIT];
        pass_or_drop<FOLDS, FM_BITS>(fm_in, fm_out, leave);
        if (leave)
            exit_out.write(tagged<ID_BITS, EXIT_BITS, REC_BITS>(id, exit_index, rec));
        else
            id_out.write(id);
    }
}

template <unsigned FOLDS, unsigned FM_BITS, unsigned ID_BITS, unsigned EXIT_BITS, unsigned REC_BITS,
          unsigned EXIT_FLAG_BIT, unsigned CLASS_BITS, unsigned CLASS_LSB>
void gate_class(hls::stream<ap_uint<FM_BITS>> &fm_in, hls::stream<ap_uint<ID_BITS>> &id_in,
                hls::stream<ap_uint<REC_BITS>> &rec_in, hls::stream<ap_uint<FM_BITS>> &fm_out,
                hls::stream<ap_uint<ID_BITS>> &id_out, hls::stream<ap_uint<CLASS_BITS>> &cls_out,
                hls::stream<ap_uint<ID_BITS + EXIT_BITS + REC_BITS>> &exit_out, const unsigned exit_index,
                const unsigned samples) {
    static_assert(CLASS_LSB + CLASS_BITS <= EXIT_FLAG_BIT, "the class lies below the exit flag");
    for (unsigned s = 0; s < samples; s++) {
        const ap_uint<ID_BITS> id = id_in.read();
        const ap_uint<REC_BITS> rec = rec_in.read();
        const bool leave = rec[EXIT_FLAG_BIT];
        pass_or_drop<FOLDS, FM_BITS>(fm_in, fm_out, leave);
        if (leave) {
            exit_out.write(tagged<ID_BITS, EXIT_BITS, REC_BITS>(id, exit_index, rec));
        } else {
            id_out.write(id);
            cls_out.write(rec(CLASS_LSB + CLASS_BITS - 1, CLASS_LSB));
        }
    }
}

template <unsigned ID_BITS, unsigned EXIT_BITS, unsigned REC_BITS>
void tag(hls::stream<ap_uint<ID_BITS>> &id_in, hls::stream<ap_uint<REC_BITS>> &rec_in,
         hls::stream<ap_uint<ID_BITS + EXIT_BITS + REC_BITS>> &out, const unsigned exit_index,
         const unsigned samples) {
    for (unsigned s = 0; s < samples; s++) {
#pragma HLS PIPELINE II = 1
        out.write(tagged<ID_BITS, EXIT_BITS, REC_BITS>(id_in.read(), exit_index, rec_in.read()));
    }
}

// `total` records in all leave through `out`; each cycle looks at one input, round robin.
template <unsigned EXITS, unsigned WIDTH>
void merge(hls::stream<ap_uint<WIDTH>> in[EXITS], hls::stream<ap_uint<WIDTH>> &out, const unsigned total) {
    unsigned done = 0, k = 0;
    while (done < total) {
#pragma HLS PIPELINE II = 1
        ap_uint<WIDTH> rec;
        if (in[k].read_nb(rec)) {
            out.write(rec);
            done++;
        }
        k = (k == EXITS - 1) ? 0 : k + 1;
    }
}

// Numbers the samples of a batch as the input DMA streams them: one id per feature map.
template <unsigned ID_BITS>
void id_source(hls::stream<ap_uint<ID_BITS>> &out, const ap_uint<ID_BITS> first, const unsigned samples) {
    for (unsigned s = 0; s < samples; s++) {
#pragma HLS PIPELINE II = 1
        out.write(first + s);
    }
}

}  // namespace exitflow

#endif
