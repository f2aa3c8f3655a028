"""Rewrites of exported ONNX graphs that keep their function and make ONNX Runtime faster.

Transposed convolutions as polyphase convolutions. A ConvTranspose of stride s writes output n = s*i - pad + k
from input i through kernel tap k, so output phase r = n mod s only ever sees the taps k with
(r + pad - k) mod s == 0, each at a fixed input offset d = (r + pad - k) / s. Every phase is therefore an
ordinary stride-1 convolution of the input with a sub-kernel. Same multiply-adds, but ONNX Runtime's blocked
Conv kernels run them without ConvTranspose's column buffer (K*K times the output size) and its scatter-add,
which dominate synthesis time on a memory-bound CPU.

The s*s phase outputs must then be interleaved (Concat + DepthToSpace). Where the layer feeds, through ops
that act on each pixel alone (GDN, activations, 1x1 convolutions), a narrow transposed convolution (the last
one, to RGB), the interleave is skipped: the pointwise ops run on each phase, and the narrow layer, which reads
phase q of its input at positions s*i + q, becomes one ConvTranspose per phase with the stride multiplied by s
and the padding shifted by its own stride times q; their outputs are summed.

Layers with fewer than MIN_SPLIT_CHANNELS output channels are not split: there the phase convolutions are too
narrow to pay for the interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_SPLIT_CHANNELS = 16
POINTWISE_OPS = {"Mul", "Add", "Sub", "Div", "Sqrt", "Relu", "LeakyRelu", "Sigmoid", "Abs", "Neg", "Clip"}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@dataclass(frozen=True)
class _ConvT:
    """A plain 2-D ConvTranspose with constant weights, square kernel and equal strides and paddings, whose
    output is exactly `stride` times its input."""

    weight: np.ndarray  # (in, out, k, k)
    bias: str | None  # initializer name
    stride: int
    pad: int

    @classmethod
    def parse(cls, node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> _ConvT | None:
        if node.op_type != "ConvTranspose" or node.input[1] not in weights:
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias not in weights:
            return None
        w, a = weights[node.input[1]], _attrs(node)
        if w.ndim != 4 or w.shape[2] != w.shape[3] or a.get("group", 1) != 1 or "output_shape" in a:
            return None
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or list(a.get("dilations", [1, 1])) != [1, 1]:
            return None
        strides, pads = list(a.get("strides", [1, 1])), list(a.get("pads", [0, 0, 0, 0]))
        out_pad = list(a.get("output_padding", [0, 0]))
        if len(set(strides)) != 1 or len(set(pads)) != 1 or len(set(out_pad)) != 1:
            return None
        s, k, p = strides[0], w.shape[2], pads[0]
        # Output length s*(L-1) + k - 2p + output_padding must be s*L, and every phase needs a tap.
        if s < 2 or k < s or k - 2 * p + out_pad[0] != s:
            return None
        return cls(w, bias, s, p)

    @property
    def splittable(self) -> bool:
        return self.weight.shape[1] >= MIN_SPLIT_CHANNELS

    def phase_taps(self) -> list[list[tuple[int, int]]]:
        """For each output phase r: (input offset d, kernel tap k) pairs, by increasing d."""
        k, s, p = self.weight.shape[2], self.stride, self.pad
        return [sorted(((r + p - t) // s, t) for t in range(k) if (r + p - t) % s == 0) for r in range(s)]

    def phase_pads(self, inner: int) -> list[tuple[int, int, int]] | None:
        """Reading an input interleaved from `inner` phases, phase q alone: (pad begin, pad end, output
        padding) of a ConvTranspose with stride inner*stride, or None where ONNX cannot express it."""
        k, big = self.weight.shape[2], inner * self.stride
        out = []
        for q in range(inner):
            begin = self.pad - self.stride * q  # output n = big*i + stride*q - pad + tap
            end = k - big - begin  # so that the output is big * (the phase's length)
            if begin < 0:
                return None
            out.append((begin, end, 0) if end >= 0 else (begin, 0, -end))
        return out if all(op < big for _, _, op in out) else None


def _pointwise(node: onnx.NodeProto) -> bool:
    if node.op_type in POINTWISE_OPS:
        return True
    if node.op_type != "Conv":
        return False
    a = _attrs(node)
    return (
        list(a.get("kernel_shape", [])) == [1, 1]
        and set(a.get("strides", [1])) == {1}
        and set(a.get("pads", [0])) == {0}
        and set(a.get("dilations", [1])) == {1}
    )


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.constants = set(self.weights) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.outputs = {o.name for o in graph.output}

    def pointwise_chain(self, start: str) -> tuple[list[onnx.NodeProto], onnx.NodeProto, _ConvT] | None:
        """The pointwise nodes from tensor `start` up to the one narrow ConvTranspose they all lead to (and that
        layer, parsed), if the tensors on the way are used by nothing else."""
        chain: list[onnx.NodeProto] = []
        seen: set[int] = set()
        tensors, frontier = {start}, [start]
        end: tuple[onnx.NodeProto, _ConvT] | None = None
        while frontier:
            for node in self.consumers.get(frontier.pop(), []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                conv_t = _ConvT.parse(node, self.weights)
                if conv_t is not None and not conv_t.splittable and end is None and node.input[0] in tensors:
                    end = node, conv_t
                    continue
                if not _pointwise(node):
                    return None
                chain.append(node)
                tensors.update(node.output)
                frontier.extend(node.output)
        if end is None or tensors & self.outputs:
            return None
        for node in chain:
            if any(i and i not in tensors and i not in self.constants for i in node.input):
                return None
        # The narrow layer reads the chain's last tensor, and only itself consumes it.
        if len(self.consumers[end[0].input[0]]) != 1:
            return None
        order = {id(n): i for i, n in enumerate(self.graph.node)}
        return sorted(chain, key=lambda n: order[id(n)]), *end


def split_transposed_convs(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every wide ConvTranspose as polyphase Convs (see the module docstring). Returns how
    many were rewritten."""
    g = _Graph(model.graph)
    nodes: list[onnx.NodeProto] = []
    absorbed: set[int] = set()  # ids of nodes already emitted per phase
    replaced: set[str] = set()  # weights of the rewritten layers
    for node in model.graph.node:
        if id(node) in absorbed:
            continue
        conv_t = _ConvT.parse(node, g.weights)
        if conv_t is None or not conv_t.splittable:
            nodes.append(node)
            continue
        replaced.add(node.input[1])
        phases = _emit_phases(node, conv_t, model.graph, nodes)
        found = g.pointwise_chain(node.output[0])
        pads = found[2].phase_pads(conv_t.stride) if found else None
        if found is None or pads is None:
            # Concatenated phase-major on channels, which is DepthToSpace's DCR order.
            cat = f"{node.name}/phases"
            nodes.append(helper.make_node("Concat", [p for _, _, p in phases], [cat], name=cat, axis=1))
            nodes.append(
                helper.make_node(
                    "DepthToSpace",
                    [cat],
                    list(node.output),
                    name=f"{node.name}/interleave",
                    blocksize=conv_t.stride,
                    mode="DCR",
                )
            )
            continue
        chain, end, narrow = found
        absorbed.update(id(n) for n in (*chain, end))
        k, big = narrow.weight.shape[2], narrow.stride * conv_t.stride
        terms: list[str] = []
        for rh, rw, tensor in phases:
            suffix = f"/phase{rh}{rw}"
            rename = {node.output[0]: tensor}
            for c in chain:
                rename.update({o: o + suffix for o in c.output})
                clone = onnx.NodeProto()
                clone.CopyFrom(c)
                clone.name = c.name + suffix
                clone.input[:] = [rename.get(i, i) for i in c.input]
                clone.output[:] = [rename[o] for o in c.output]
                nodes.append(clone)
            (bh, eh, oh), (bw, ew, ow) = pads[rh], pads[rw]
            term = f"{end.name}{suffix}"
            bias = [narrow.bias] if narrow.bias and not terms else []  # the bias is added once
            nodes.append(
                helper.make_node(
                    "ConvTranspose",
                    [rename[end.input[0]], end.input[1], *bias],
                    [term],
                    name=term,
                    kernel_shape=[k, k],
                    strides=[big, big],
                    pads=[bh, bw, eh, ew],
                    output_padding=[oh, ow],
                )
            )
            terms.append(term)
        nodes.append(helper.make_node("Sum", terms, list(end.output), name=f"{end.name}/sum"))
    if not replaced:
        return 0
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for n in model.graph.node for name in n.input}
    kept = [i for i in model.graph.initializer if i.name not in replaced or i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return len(replaced)


def _emit_phases(
    node: onnx.NodeProto, conv_t: _ConvT, graph: onnx.GraphProto, nodes: list[onnx.NodeProto]
) -> list[tuple[int, int, str]]:
    """One stride-1 Conv per output phase of `node`; returns (row phase, column phase, output tensor)."""
    taps = conv_t.phase_taps()
    bias = [conv_t.bias] if conv_t.bias else []
    out = []
    for rh, th in enumerate(taps):
        for rw, tw in enumerate(taps):
            sub = conv_t.weight[:, :, [t for _, t in th]][:, :, :, [t for _, t in tw]]  # (in, out, Th, Tw)
            name = f"{node.name}/phase{rh}{rw}"
            graph.initializer.append(
                numpy_helper.from_array(np.ascontiguousarray(sub.transpose(1, 0, 2, 3)), f"{name}/weight")
            )
            nodes.append(
                helper.make_node(
                    "Conv",
                    [node.input[0], f"{name}/weight", *bias],
                    [f"{name}/out"],
                    name=name,
                    kernel_shape=[len(th), len(tw)],
                    pads=[-th[0][0], -tw[0][0], th[-1][0], tw[-1][0]],  # output m reads inputs m + d
                )
            )
            out.append((rh, rw, f"{name}/out"))
    return out
