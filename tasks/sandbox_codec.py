"""Framing and the value codec of the code sandbox: every process of it (pool, job loop, zygote, program) talks
through these length-prefixed JSON messages and nothing else.

Values cross as *tagged JSON* of exact builtin types: ``None``/``bool``/``int``/``float`` (``nan``/``inf``
as JSON's ``NaN``/``Infinity``)/``str`` as themselves, ``list`` as a list, and ``{"t": [...]}`` tuple,
``{"s"}`` set, ``{"fs"}`` frozenset, ``{"d": [[k, v], ...]}`` dict, ``{"b": hex}`` bytes, ``{"c": [re, im]}``
complex, ``{"ty": name}`` a builtin type, ``{"ctr"|"od"|"dd"|"dq"}`` Counter/OrderedDict/defaultdict/deque,
``{"m"}`` a regex match; anything else is an opaque handle ``{"h": n}``. Decoding builds fresh builtin values
with ``json.loads`` and constructors only: nothing received is executed, unpickled or evaluated, so an object
whose ``__eq__`` lies cannot survive the trip. A message longer than the reader's ``limit`` is refused from its
4-byte header, before a byte of it is read or decoded (a 63 MB reply never reaches ``json.loads``).

This file is imported by the untrusted side too (it is copied into the sandbox's root): it must not import
anything of the project.
"""

from __future__ import annotations

import builtins
import collections
import json
import os
import re
import select
import struct
import time

_LEN = struct.Struct(">I")
MAX_MESSAGE = 64 << 20


class MessageTooLarge(ValueError):
    """A peer announced a message over the reader's limit; the channel is unusable after it."""


def send(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    data = _LEN.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def _recv_exact(fd: int, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("no answer within the wall time")
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("peer closed")
        buf += chunk
    return bytes(buf)


def recv(fd: int, deadline: float | None = None, limit: int = MAX_MESSAGE):
    """One message; ``MessageTooLarge`` when the header announces more than ``limit`` bytes."""
    (n,) = _LEN.unpack(_recv_exact(fd, 4, deadline))
    if n > limit:
        raise MessageTooLarge(f"message of {n} bytes exceeds the limit of {limit}")
    return json.loads(_recv_exact(fd, n, deadline))


_SCALARS = (type(None), bool, int, float, str)
_MAPPINGS = {collections.Counter: "ctr", collections.OrderedDict: "od", collections.defaultdict: "dd"}
_MAPPING_TYPES = {tag: t for t, tag in _MAPPINGS.items()}


class MatchResult:
    """A ``re.Match`` returned by the program, rebuilt from data on the trusted side: truthy, with the groups
    and spans it had (tests such as MBPP's ``assert text_match(...)`` only need that)."""

    def __init__(self, groups: list, spans: list):
        self._groups, self._spans = groups, [tuple(sp) for sp in spans]

    def group(self, *idx):
        return self._groups[idx[0] if idx else 0] if len(idx) <= 1 else tuple(self._groups[i] for i in idx)

    def groups(self):
        return tuple(self._groups[1:])

    def span(self, i=0):
        return self._spans[i]

    def start(self, i=0):
        return self._spans[i][0]

    def end(self, i=0):
        return self._spans[i][1]

    def __repr__(self):
        return f"<re.Match span={self._spans[0]} match={self._groups[0]!r}>"


def encode(v, handle):
    """Exact builtin (and a few stdlib container) types to tagged JSON; anything else through ``handle(v)``
    (a handle tag, or an error on the trusted side)."""
    t = type(v)
    if t in _SCALARS:
        return v
    if t is type and getattr(builtins, v.__name__, None) is v:
        return {"ty": v.__name__}
    if t in _MAPPINGS:
        return {_MAPPINGS[t]: [[encode(k, handle), encode(x, handle)] for k, x in v.items()]}
    if t is collections.deque:
        return {"dq": [encode(x, handle) for x in v]}
    if t is re.Match:
        n = v.re.groups + 1
        return {"m": [[encode(v.group(i), handle) for i in range(n)], [list(v.span(i)) for i in range(n)]]}
    if t is list:
        return [encode(x, handle) for x in v]
    if t is tuple:
        return {"t": [encode(x, handle) for x in v]}
    if t is set:
        return {"s": [encode(x, handle) for x in v]}
    if t is frozenset:
        return {"fs": [encode(x, handle) for x in v]}
    if t is dict:
        return {"d": [[encode(k, handle), encode(x, handle)] for k, x in v.items()]}
    if t is bytes:
        return {"b": v.hex()}
    if t is complex:
        return {"c": [v.real, v.imag]}
    return handle(v)


def decode(v, ref):
    """Tagged JSON to fresh builtin values; ``{"h": id}`` / ``{"g": name}`` through ``ref``. Raises
    ValueError/TypeError/RecursionError on malformed input (the caller treats any as a broken peer)."""
    if type(v) is list:
        return [decode(x, ref) for x in v]
    if type(v) is not dict:
        return v
    if len(v) != 1:
        raise ValueError("malformed value")
    (tag, x), = v.items()
    if tag == "t":
        return tuple(decode(y, ref) for y in x)
    if tag == "s":
        return {decode(y, ref) for y in x}
    if tag == "fs":
        return frozenset(decode(y, ref) for y in x)
    if tag == "d":
        return {decode(k, ref): decode(y, ref) for k, y in x}
    if tag == "b":
        return bytes.fromhex(x)
    if tag == "ty":
        t = getattr(builtins, str(x))
        if type(t) is not type:
            raise ValueError(f"{x!r} is not a builtin type")
        return t
    if tag in _MAPPING_TYPES:
        items = [(decode(k, ref), decode(y, ref)) for k, y in x]
        if tag == "dd":
            return collections.defaultdict(None, items)
        return _MAPPING_TYPES[tag](dict(items)) if tag == "ctr" else _MAPPING_TYPES[tag](items)
    if tag == "dq":
        return collections.deque(decode(y, ref) for y in x)
    if tag == "m":
        return MatchResult([decode(g, ref) for g in x[0]], [[int(a), int(b)] for a, b in x[1]])
    if tag == "c":
        return complex(float(x[0]), float(x[1]))
    if tag in ("h", "g"):
        return ref(tag, x)
    raise ValueError(f"unknown tag {tag!r}")
