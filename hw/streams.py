"""Streams inside one stage graph, simulated pixel by pixel: how deep a residual block's skip
FIFO must be, found without Vivado.

A residual block forks its input (DuplicateStreams) into a main branch (window generators and
weight layers) and a skip branch, and adds the two again (ElementwiseAdd). The add needs the main
branch's first output before it reads the skip's first pixel; by then the fork has pushed every
pixel the main branch's window generators need for their first windows into the skip branch too,
and the fork writes both outputs at once: a skip FIFO shallower than that stalls the fork, and
one much shallower deadlocks the stage (FINN issue 1094: a network with skips hangs on the
board). FINN sizes FIFOs by RTL simulation, which needs Vivado.

:func:`simulate` runs a graph's FINN nodes as an event simulation at pixel granularity over a few
frames back to back:

* a node makes output pixels one after another, each ``cycles / output pixels`` cycles (FINN's
  ``get_exp_cycles``) after the previous one at the earliest;
* it starts output pixel ``p`` when its inputs hold the pixels ``p`` needs and reads them then
  (lazily): a window generator needs the input pixels up to the bottom-right one of the window
  (``(oy*s + (kh-1)*d) * W + ox*s + (kw-1)*d + 1`` pixels of the frame), padding the real pixels up
  to the output pixel's position, global pooling the whole frame, every other node the pixel of
  the same index;
* a finished pixel waits in the node until every consumer has room (blocking after service): a
  stream between two nodes holds ``LINK_PIXELS`` pixels, a skip branch's FIFO its depth in
  pixels (its depth in words over the words per pixel of its stream); the fork hands a pixel to
  both branches at once.

The stage's interval is the output's steady-state time per frame. :func:`size_fifos` gives every
plain stream of a graph that FINN's 2-word streams stall a FIFO (one depth for all), then each
skip FIFO the smallest depth at which the stage keeps the interval it has with unbounded skip
FIFOs, and checks that the sized graph runs every frame through (no deadlock). It is a model at
pixel granularity, not RTL: words inside a pixel, AXI handshakes and a window generator's
read-ahead are left out (reading ahead never needs a deeper skip FIFO: the main branch then holds
more of what the fork sent).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from exitflow.hw.folding import generic_op

#: Pixels a plain stream between two nodes holds (FINN's HLS streams of depth 2, about a pixel
#: of words each side of a handshake).
LINK_PIXELS = 1
#: Depths (pixels) tried for every plain stream of a graph whose 1-pixel streams stall it
LINK_STEPS = (1, 2, 4, 8, 16, 32)
#: A graph's streams are deep enough when its interval is within this share of the interval it
#: has with unbounded streams
TOLERANCE = 0.02
UNBOUNDED = 1 << 40
#: Frames simulated back to back; the interval is measured between the outputs of the last ones.
FRAMES = 4


class Deadlock(Exception):
    """The simulated graph stops with frames unfinished."""


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str]  # producing node per data input ("" for the graph input)
    in_pixels: list[int]  # pixels per frame of each input
    out_pixels: int
    service: float  # cycles per output pixel
    needs: list[np.ndarray]  # per input: input pixels needed (count) before output pixel p
    capacity: list[int] = field(default_factory=list)  # pixels the stream into each input holds
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (node, input index)
    made: int = 0  # output pixels handed on
    holding: bool = False  # a pixel in service or finished, not yet handed on
    done_at: float = 0.0  # when the pixel in service is finished
    read: list[int] = field(default_factory=list)  # input pixels read, per input


def _pixels(shape) -> int:
    return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1


def _needs(inst, op: str, in_pixels: list[int], out_pixels: int) -> list[np.ndarray]:
    """Input pixels (count within the frame) each output pixel needs, per data input."""
    p = np.arange(out_pixels)
    if op == "ConvolutionInputGenerator":
        kh, kw = inst.get_nodeattr("ConvKernelDim")
        sh, sw = inst.get_nodeattr("Stride")
        dh, dw = inst.get_nodeattr("Dilation")
        _, width = inst.get_nodeattr("IFMDim")
        _, ow = inst.get_nodeattr("OFMDim")
        oy, ox = p // ow, p % ow
        last = (oy * sh + (kh - 1) * dh) * width + ox * sw + (kw - 1) * dw + 1
        return [np.minimum(last, in_pixels[0])]
    if op == "FMPadding":
        top, left, _, _ = inst.get_nodeattr("Padding")
        h, w = inst.get_nodeattr("ImgDim")
        _, pw = inst.get_padded_odim()
        y, x = p // pw - top, p % pw - left
        rows_before = np.clip(y, 0, h)  # real pixels at or before (y, x) in raster order
        in_row = np.where((y >= 0) & (y < h), np.clip(x + 1, 0, w), 0)
        return [rows_before * w + in_row]
    if op == "GlobalAccPool":
        return [np.full(out_pixels, in_pixels[0])]
    return [np.minimum(n, np.ceil((p + 1) * n / out_pixels).astype(np.int64)) for n in in_pixels]


def _graph(model, fifo_pixels: dict[str, int], link_pixels: int = LINK_PIXELS):
    """The graph's nodes as simulation nodes (a StreamingFIFO becomes the capacity of the stream
    it sits on), the last node, and which stream each FIFO sits on."""
    from qonnx.custom_op.registry import getCustomOp

    fifo_source = {}  # FIFO output tensor -> (FIFO input tensor, FIFO name)
    for node in model.graph.node:
        if generic_op(node.op_type) == "StreamingFIFO":
            fifo_source[node.output[0]] = (node.input[0], node.name)
    producer_of, nodes, fifo_on = {}, {}, {}
    for node in model.graph.node:
        op = generic_op(node.op_type)
        if op == "StreamingFIFO":
            continue
        inst = getCustomOp(node)
        data_in = [t for t in node.input if model.get_initializer(t) is None]
        sources, capacity = [], []
        for k, tensor in enumerate(data_in):
            depth = 0
            while tensor in fifo_source:  # through FIFOs: the stream holds their depth more
                tensor, fifo = fifo_source[tensor]
                depth += fifo_pixels[fifo]
                fifo_on[node.name, k] = fifo
            sources.append(tensor)
            capacity.append(link_pixels + depth)
        in_pixels = [_pixels(model.get_tensor_shape(t)) for t in data_in]
        out_pixels = _pixels(model.get_tensor_shape(node.output[0]))
        nodes[node.name] = _Node(
            node.name,
            op,
            sources,
            in_pixels,
            out_pixels,
            float(inst.get_exp_cycles()) / max(out_pixels, 1),
            _needs(inst, op, in_pixels, out_pixels),
            capacity,
        )
        for tensor in node.output:
            producer_of[tensor] = node.name
    for n in nodes.values():
        n.inputs = [producer_of.get(t, "") for t in n.inputs]
        n.read = [0] * len(n.inputs)
        for k, src in enumerate(n.inputs):
            if src:
                nodes[src].consumers.append((n.name, k))
    out = model.graph.output[0].name
    while out in fifo_source:
        out = fifo_source[out][0]
    return nodes, producer_of[out], fifo_on


@dataclass(frozen=True)
class StreamRun:
    """What :func:`simulate` measured."""

    interval: float  # cycles per frame in steady state (inf: deadlock)
    deadlock: bool
    frames_done: int
    peak_pixels: dict[str, int]  # per StreamingFIFO: the most pixels its stream held


def simulate(
    model, fifo_pixels: dict[str, int] | None = None, frames: int = FRAMES, link_pixels: int = LINK_PIXELS
) -> StreamRun:
    """Run ``frames`` frames through the graph (see the module docstring); ``fifo_pixels``: the
    depth of each StreamingFIFO in pixels (default: unbounded); ``link_pixels``: what every
    stream holds besides a FIFO on it."""
    fifos = [n.name for n in model.graph.node if generic_op(n.op_type) == "StreamingFIFO"]
    depths = dict.fromkeys(fifos, UNBOUNDED) | dict(fifo_pixels or {})
    nodes, last, fifo_on = _graph(model, depths, link_pixels)
    total = {name: n.out_pixels * frames for name, n in nodes.items()}
    handed = {(c, k): 0 for n in nodes.values() for c, k in n.consumers}
    peak = dict.fromkeys(fifos, 0)
    finish: list[float] = []
    events: list[tuple[float, int, str]] = []
    seq = 0

    def wants(n: _Node, g: int) -> list[int]:
        frame, p = divmod(g, n.out_pixels)
        return [frame * n.in_pixels[k] + int(n.needs[k][p]) for k in range(len(n.inputs))]

    def step(n: _Node, now: float) -> bool:
        """Read what the next pixel needs as it arrives, hand on a finished pixel, start the next
        one; True if anything moved."""
        nonlocal seq
        moved = False
        upcoming = n.made + n.holding  # the next pixel to start
        # after its last pixel a node still reads the rest of the frame (a strided window
        # generator drops the pixels no window needs, but it takes them off the stream)
        targets = wants(n, upcoming) if upcoming < total[n.name] else [frames * i for i in n.in_pixels]
        for k, (src, want) in enumerate(zip(n.inputs, targets, strict=True)):
            if src:
                take = min(want, handed[n.name, k])
                if take > n.read[k]:
                    n.read[k] = take
                    moved = True
        if n.holding:
            if now < n.done_at or any(handed[c, k] - nodes[c].read[k] >= nodes[c].capacity[k] for c, k in n.consumers):
                return moved
            for c, k in n.consumers:
                handed[c, k] += 1
                if (c, k) in fifo_on:
                    f = fifo_on[c, k]
                    peak[f] = max(peak[f], handed[c, k] - nodes[c].read[k])
            n.holding = False
            n.made += 1
            if n.name == last:
                finish.append(now)
            moved = True
        if n.made >= total[n.name]:
            return moved
        need = wants(n, n.made)
        if any(src and n.read[k] < need[k] for k, src in enumerate(n.inputs)):
            return moved
        n.holding, n.done_at = True, now + n.service
        seq += 1
        heapq.heappush(events, (n.done_at, seq, n.name))
        return True

    now, work = 0.0, list(nodes)
    while True:
        pending = set(work)
        while work:
            name = work.pop()
            pending.discard(name)
            n = nodes[name]
            if step(n, now):
                # its consumers may have input now, its producers room, itself a next pixel
                for other in [name, *(c for c, _ in n.consumers), *(src for src in n.inputs if src)]:
                    if other not in pending:
                        pending.add(other)
                        work.append(other)
        if not events:
            break
        now = events[0][0]
        while events and events[0][0] <= now:
            work.append(heapq.heappop(events)[2])
    per = nodes[last].out_pixels
    done = len(finish) // per
    if done < frames:
        return StreamRun(math.inf, True, done, peak)
    ends = [finish[(f + 1) * per - 1] for f in range(frames)]
    interval = (ends[-1] - ends[1]) / (frames - 2) if frames > 2 else ends[-1]
    return StreamRun(interval, False, done, peak)


def words_per_pixel(model, node_name: str) -> int:
    """Stream words one pixel of a node's output stream takes (its channels over its fold): a
    StreamingFIFO's, or the stream a FIFO would sit on after any other node."""
    from qonnx.custom_op.registry import getCustomOp

    node = next(n for n in model.graph.node if n.name == node_name)
    folded = getCustomOp(node).get_folded_output_shape()
    return int(folded[-2]) if len(folded) > 2 else 1


def built_fifo_pixels(model) -> dict[str, int]:
    """The depth in pixels of every StreamingFIFO of a built graph (its ``depth`` attribute in
    words over the words per pixel of its stream)."""
    from qonnx.custom_op.registry import getCustomOp

    return {
        n.name: int(getCustomOp(n).get_nodeattr("depth")) // words_per_pixel(model, n.name)
        for n in model.graph.node
        if generic_op(n.op_type) == "StreamingFIFO"
    }


@dataclass(frozen=True)
class Sizing:
    """What :func:`size_fifos` chose for one graph."""

    link_pixels: int  # what every plain stream must hold (1: FINN's default streams do)
    skip_pixels: dict[str, int]  # per skip StreamingFIFO: its depth in pixels besides that
    interval: float  # the graph's interval as sized


def size_fifos(model, frames: int = FRAMES) -> Sizing:
    """Streams deep enough for the graph to keep (within :data:`TOLERANCE`) the interval it has
    with unbounded streams, as FINN's FIFO sizing does by RTL simulation: the smallest depth of
    :data:`LINK_STEPS` for every plain stream (a window generator waiting for rows, a strided
    layer's bursts stall 1-pixel streams), then the smallest depth of every skip StreamingFIFO
    (the graph's FIFOs, placeholders) at which the graph keeps that interval, each sized in turn
    with the others unbounded and then all checked together: the sized graph runs every frame
    through (else :class:`Deadlock`). A graph within TOLERANCE of its slowest node's FINN cycles
    with 1-pixel streams is left with them (one simulation, as most chains are)."""
    from qonnx.custom_op.registry import getCustomOp

    bound = max(float(getCustomOp(n).get_exp_cycles()) for n in model.graph.node)  # no stream does better
    run = simulate(model, None, frames, LINK_PIXELS)
    links = LINK_PIXELS
    if run.deadlock or run.interval > bound * (1 + TOLERANCE):  # FINN's streams stall it: how much deeper?
        free = simulate(model, None, frames, UNBOUNDED)
        if free.deadlock:
            raise Deadlock(f"the graph stops after {free.frames_done} of {frames} frames even with unbounded streams")
        steps = [k for k in LINK_STEPS if k > LINK_PIXELS]
        good = None
        while steps:  # the smallest step within TOLERANCE (deeper streams never slow a graph down)
            mid = len(steps) // 2
            trial = simulate(model, None, frames, steps[mid])
            if not trial.deadlock and trial.interval <= free.interval * (1 + TOLERANCE):
                good, steps = (steps[mid], trial), steps[:mid]
            else:
                steps = steps[mid + 1 :]
        # none within it: the deepest step (the build's check of the graph as built still applies)
        links, run = good or (LINK_STEPS[-1], simulate(model, None, frames, LINK_STEPS[-1]))
    target = run.interval * (1 + 1e-9)
    fifos = [n.name for n in model.graph.node if generic_op(n.op_type) == "StreamingFIFO"]
    sized = {}
    for fifo in fifos:
        lo, hi = 0, max(1, run.peak_pixels[fifo])  # hi: never blocks, so the schedule is unchanged
        while lo < hi:
            mid = (lo + hi) // 2
            trial = simulate(model, {fifo: mid}, frames, links)
            if not trial.deadlock and trial.interval <= target:
                hi = mid
            else:
                lo = mid + 1
        sized[fifo] = hi
    together = simulate(model, sized, frames, links)
    if together.deadlock or together.interval > target:
        raise Deadlock(
            f"the skip FIFOs sized one by one ({sized} pixels) stall the graph together "
            f"(interval {together.interval:.0f} against {run.interval:.0f} cycles)"
        )
    return Sizing(links, sized, together.interval)
