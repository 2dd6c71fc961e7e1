"""An ONNX model cut down to the outputs a run reads, by rewriting its protobuf bytes.

ONNX Runtime executes every node of a graph whatever outputs ``run`` asks for. A segstream model's
``confidence`` output (softmax maximum of the upsampled logits: Sub, Exp, ReduceSum, ReduceMax at full
resolution) costs 2.5 ms of the default model's 12 ms per 480x360 frame on one core, and most runs never
read it (the overlay colours ids; subscribers ask for confidence explicitly). So the CPU session runs a
copy of the graph without what only ``confidence`` needs; the ids it computes are the same nodes on the
same weights, bit for bit (tests/unit/test_prune.py).

The rewrite works on the serialized protobuf (no ``onnx`` import: 90 ms of start-up in every infer
process): it drops the nodes, initializers, value infos and graph outputs nothing kept depends on and
copies every other byte as it is. Field numbers: ModelProto.graph 7; GraphProto node 1, initializer 5,
input 11, output 12, value_info 13; NodeProto input 1, output 2, attribute 5; AttributeProto g 6,
graphs 11; TensorProto name 8, data_location 14; ValueInfoProto name 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from engines.runtime.probe import _varint

Span = tuple[int, int]


def keep_outputs(data: bytes, keep: Iterable[str]) -> bytes | None:
    """``data`` (a serialized ONNX model) with only the outputs in ``keep`` and what they need. ``keep``
    names graph outputs, or tensors a node makes (they become outputs, in ``keep``'s order, after the
    graph's own). None when nothing changes, a name is neither, or the graph cannot be cut safely: a
    node with a subgraph (If, Loop, Scan: it may read any outer name), weights in an external file
    (loaded relative to the model's path, which a model handed over as bytes has not), or bytes that
    do not parse."""
    try:
        return _keep_outputs(memoryview(data), list(dict.fromkeys(keep)))
    except ValueError:  # not ours to judge: the caller loads the file as it is and reports its errors
        return None


def _spans(
    buf: memoryview, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, object, Span]]:
    """(field number, wire type, value, the whole field's byte span) of one message, in order: ints
    for varints, (start, end) spans for length-delimited fields, None for fixed-size ones."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        first = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value = (pos, pos + n)
            pos += n
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("field runs past the end")
        yield number, wire, value, (first, pos)


def _strings(buf: memoryview, span: Span, number: int) -> list[str]:
    return [
        bytes(buf[v[0] : v[1]]).decode(errors="replace")
        for n, w, v, _ in _spans(buf, *span)
        if n == number and w == 2
    ]


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _keep_outputs(buf: memoryview, wanted: list[str]) -> bytes | None:
    keep = set(wanted)
    top = list(_spans(buf))
    graphs = [(v, span) for n, w, v, span in top if n == 7 and w == 2]
    if len(graphs) != 1:
        return None
    (g0, g1), graph_span = graphs[0]
    fields = list(_spans(buf, g0, g1))
    nodes: dict[int, tuple[list[str], list[str]]] = {}  # field index -> (inputs, outputs)
    init_names: dict[int, str] = {}
    outputs: dict[int, str] = {}
    for i, (n, w, v, _) in enumerate(fields):
        if w != 2:
            continue
        if n == 1:
            for an, aw, av, _ in _spans(buf, *v):
                if an == 5 and aw == 2 and any(k in (6, 11) for k, *_ in _spans(buf, *av)):
                    return None
            nodes[i] = (_strings(buf, v, 1), _strings(buf, v, 2))
        elif n == 5:
            if any(tn == 14 and tw == 0 and tv == 1 for tn, tw, tv, _ in _spans(buf, *v)):
                return None  # data_location EXTERNAL
            names = _strings(buf, v, 8)
            init_names[i] = names[0] if names else ""
        elif n == 12:
            names = _strings(buf, v, 1)
            outputs[i] = names[0] if names else ""
    producer = {o: i for i, (_, outs) in nodes.items() for o in outs if o}
    declared = set(outputs.values())
    added = [k for k in wanted if k not in declared]
    if not keep or keep == declared or any(k not in producer for k in added):
        return None  # nothing changes, or a name the graph neither outputs nor makes
    needed: set[str] = set()
    used: set[int] = set()
    todo = list(keep)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        i = producer.get(name)
        if i is not None and i not in used:
            used.add(i)
            todo.extend(x for x in nodes[i][0] if x)
    inits = set(init_names.values())
    kept: list[memoryview] = []  # joined once at the end: one copy of the weights, not several
    for i, (n, w, v, (first, end)) in enumerate(fields):
        if w == 2:
            if (n == 1 and i not in used) or (n == 5 and init_names[i] not in needed):
                continue
            if n == 12 and outputs[i] not in keep:
                continue
            if n in (11, 13):
                names = _strings(buf, v, 1)
                name = names[0] if names else ""
                # an input that only gives an initializer's default goes with it; a real input stays
                if name not in needed and (n == 13 or name in inits):
                    continue
        kept.append(buf[first:end])
    for name in added:  # a ValueInfoProto with its name only: the runtime infers the type
        raw = name.encode()
        info = _varint_bytes((1 << 3) | 2) + _varint_bytes(len(raw)) + raw
        kept.append(memoryview(_varint_bytes((12 << 3) | 2) + _varint_bytes(len(info)) + info))
    parts: list[bytes | memoryview] = []
    for *_, span in top:
        if span == graph_span:
            size = sum(len(k) for k in kept)
            parts += [_varint_bytes((7 << 3) | 2), _varint_bytes(size), *kept]
        else:
            parts.append(buf[span[0] : span[1]])
    return b"".join(parts)
