"""The symbolic-equality worker: a separate, limited process that builds sympy objects from parse trees and
decides equality. Started by ``tasks.math_pool`` as ``python -I -B tasks/math_worker.py <config json>``; it imports
nothing from the project and never parses text: it receives trees (JSON lists) built by ``tasks.math_parse`` in
the trainer and constructs ``sympy.Integer``/``Rational``/``Add``/``Mul``/``Pow``/... from them.

Before it reads a request it limits itself: ``RLIMIT_AS``, ``RLIMIT_CPU`` (re-armed per request),
``RLIMIT_FSIZE`` 0, ``RLIMIT_NOFILE``, ``RLIMIT_CORE`` 0, and, when started as root: its own network
namespace (``unshare(CLONE_NEWNET)``: no interface but a down loopback), then the unprivileged uid/gid given
in its config, ``RLIMIT_NPROC`` 1 and ``PR_SET_NO_NEW_PRIVS``. Protocol: one JSON line per request on stdin,
one JSON line per answer on stdout; it exits at end of input, so it outlives a dead trainer by at most one
request's CPU limit (``PR_SET_PDEATHSIG`` is not used: it fires when the *thread* that started the worker
exits, and the pool starts workers from the grading threads).

Decision (``decide``), for the difference d = a - b:
1. a fast numeric screen: d evaluated to 30 digits (symbols replaced by two fixed rational points); a value
   that is clearly non-zero means "not equal";
2. a proof: d is 0 after sympy's automatic evaluation, or ``simplify(d) == 0``, or (constants only) the
   minimal polynomial of d is x. Numerically zero but unproven is "not equal", so a decimal never equals an
   irrational however many digits it has.
``round`` mode (gold written as a decimal with k places): a is a real constant with |a - g| <= 10^-k / 2.
"""

import ctypes
import json
import os
import resource
import signal
import sys


def _limit(config: dict) -> None:
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (config["cpu_s"], config["cpu_s"]))


def _drop(config: dict) -> dict:
    """Network namespace and unprivileged uid when root; returns what was applied (reported to the pool)."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = {"netns": False, "uid": os.getuid()}
    if os.getuid() == 0:
        done["netns"] = libc.unshare(0x40000000) == 0  # CLONE_NEWNET
        uid = config["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        done["uid"] = os.getuid()
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return done


def build(n, sp):
    """A sympy object from a parse tree, by construction."""
    kind = n[0]
    if kind == "num":
        return sp.Rational(sp.Integer(int(n[1])), sp.Integer(int(n[2])))
    if kind == "sym":
        return sp.Symbol(n[1])
    if kind == "const":
        return {"pi": sp.pi, "E": sp.E, "I": sp.I, "oo": sp.oo}[n[1]]
    if kind == "fn":
        return FUNCS[n[1]](build(n[2], sp))
    if kind == "log":
        x = build(n[2], sp)
        return sp.log(x) if n[1] is None else sp.log(x, build(n[1], sp))
    args = [build(x, sp) for x in n[1:]]
    if kind == "add":
        return sp.Add(*args)
    if kind == "sub":
        return sp.Add(args[0], -args[1])
    if kind == "mul":
        return sp.Mul(*args)
    if kind == "div":
        return sp.Mul(args[0], sp.Pow(args[1], -1))
    if kind == "neg":
        return -args[0]
    if kind == "pow":
        return sp.Pow(*args)
    if kind == "root":
        x, k = args
        # \sqrt[3]{-8} = -2: the real root of a negative number for an odd index, the principal root otherwise
        if k.is_Integer and k % 2 == 1 and x.is_negative:
            return -sp.root(-x, k)
        return sp.root(x, k)
    if kind == "fact":
        return sp.factorial(args[0])
    if kind == "abs":
        return sp.Abs(args[0])
    raise ValueError(f"unknown node {kind!r}")


FUNCS = {}
_POINTS = ("7/11", "13/17")


def _numeric(d, sp, point: int):
    subs = {s: sp.Rational(_POINTS[point]) + k for k, s in enumerate(sorted(d.free_symbols, key=str))}
    v = sp.N(d.subs(subs), 30)
    re, im = v.as_real_imag()
    if not (re.is_Number and im.is_Number) or not (re.is_finite and im.is_finite):
        return None
    return abs(complex(re, im))


def decide(a, b, mode, sp) -> bool:
    x = build(a, sp)
    if mode[0] == "round":
        if x.free_symbols:
            return False
        k, g = int(mode[1]), sp.Rational(int(mode[2]), int(mode[3]))
        re, im = sp.N(x, k + 30).as_real_imag()
        return bool(re.is_Number and im.is_Number and abs(im) < sp.Rational(1, 10 ** (k + 20))
                    and abs(re - g) <= sp.Rational(1, 2 * 10 ** k))
    y = build(b, sp)
    d = x - y
    if d == 0:
        return True
    if d.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        return False
    for point in (0, 1) if d.free_symbols else (0,):
        v = _numeric(d, sp, point)
        scale = _numeric(y, sp, point) or 0.0
        if v is not None and v > 1e-20 * max(1.0, scale):
            return False
    if sp.simplify(d) == 0:
        return True
    if not d.free_symbols:
        try:
            return sp.minimal_polynomial(d, sp.Symbol("x")) == sp.Symbol("x")
        except (NotImplementedError, ValueError, sp.polys.polyerrors.PolynomialError):
            return False
    return False


def main() -> None:
    config = json.loads(sys.argv[1])
    _limit(config)
    # replies go to a private copy of stdout; anything printed by a library goes to /dev/null, not the protocol
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.stdout = open(os.devnull, "w")
    import sympy as sp

    FUNCS.update(sin=sp.sin, cos=sp.cos, tan=sp.tan, cot=sp.cot, sec=sp.sec, csc=sp.csc, arcsin=sp.asin,
                 arccos=sp.acos, arctan=sp.atan, sinh=sp.sinh, cosh=sp.cosh, tanh=sp.tanh, exp=sp.exp)
    # warm the lazily imported parts (simplify, evalf, minimal_polynomial) while files are still readable
    decide(["root", ["num", "8", "1"], ["num", "2", "1"]], ["mul", ["num", "2", "1"], ["root", ["num", "2", "1"],
           ["num", "2", "1"]]], ["exact"], sp)
    decide(["fn", "cos", ["div", ["const", "pi"], ["num", "5", "1"]]], ["num", "1", "3"], ["exact"], sp)
    x = ["sym", "x"]
    decide(["add", ["pow", ["fn", "sin", x], ["num", "2", "1"]], ["pow", ["fn", "cos", x], ["num", "2", "1"]]],
           ["add", ["log", None, ["abs", x]], ["fact", x]], ["exact"], sp)
    decide(["root", ["num", "2", "1"], ["num", "2", "1"]], None, ["round", 2, "141", "100"], sp)
    done = _drop(config)
    reply.write(json.dumps({"ready": True, **done}) + "\n")
    reply.flush()
    for line in sys.stdin:
        req = json.loads(line)
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = int(used.ru_utime + used.ru_stime + req["cpu_s"]) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (min(soft, config["cpu_s"]), config["cpu_s"]))
        try:
            out = {"eq": bool(decide(req["a"], req["b"], req["mode"], sp))}
        except Exception as e:  # noqa: BLE001 - anything sympy raises on a tree means "not equal"
            out = {"eq": False, "error": f"{type(e).__name__}: {e}"[:200]}
        reply.write(json.dumps(out) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
