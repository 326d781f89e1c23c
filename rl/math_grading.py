"""Math answer checking: extract the final answer of a response and decide whether it equals the gold answer,
as the MATH grader does (Hendrycks et al. 2021, ``math_equivalence.is_equiv``: normalise the LaTeX, then
compare), extended with structure (tuples, intervals, sets, matrices, ``\\pm``), exact rational arithmetic and
symbolic equality with sympy.

The reward and the evaluation metric are the same function (STYLE.md habit 3): ``math_reward`` is
``is_equiv(extract_answer_math(response), example["answer"])``.

Symbolic checks run in a separate worker process (``multiprocessing`` spawn context) with a hard wall-time
limit: a LaTeX parse or ``simplify`` that hangs is killed with the process (SIGKILL), which is restarted on
the next call, and the pair counts as not equal. Signals (``SIGALRM``) were not used because they only work
in the main thread and cannot interrupt long C-level work; a process can always be killed.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

# ------------------------------------------------------------------------------------------------------------
# extraction


def last_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced), or of ``\\boxed x``
    (MATH's ``last_boxed_only_string`` handles that form too); None when there is none or it is unclosed."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*(\{| )", text)]
    for m in reversed(starts):
        if m.group(1) == " ":
            rest = text[m.end():]
            return re.split(r"[$\n]", rest, maxsplit=1)[0].strip() or None
        depth, i = 1, m.end()
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[m.end():i].strip()
            i += 1
    return None


# The paper's line, to the end of its line: "$X$" (inline math), or plain text; a sentence-ending full stop and
# "I hope it is correct." are not part of the answer (a model often writes one without the other).
_FINAL = re.compile(r"final answer is\s*(\$.+?\$|[^\n]*?)\s*\.?\s*(?:I hope it is correct\.?)?\s*$",
                    re.IGNORECASE | re.MULTILINE)
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer_math(text: str, fallback_last_number: bool = True) -> str | None:
    """The final answer of a response, or None.

    Looks for, and takes whichever ends LAST in the text: the last ``\\boxed{...}``/``\\fbox{...}``; the paper's
    "Final Answer: The final answer is $X$. I hope it is correct."; GSM8K's ``#### X``. Without any of them,
    the last number in the text if ``fallback_last_number`` (else None).
    """
    candidates = []
    boxed_at = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if boxed_at >= 0:
        b = last_boxed(text)
        if b is not None:
            candidates.append((boxed_at, b))
    finals = list(_FINAL.finditer(text))
    if finals:
        ans = finals[-1].group(1).strip()
        if ans.startswith("$") and ans.endswith("$") and len(ans) >= 2:
            ans = ans[1:-1].strip()
        inner = last_boxed(ans)
        candidates.append((finals[-1].start(), inner if inner is not None else ans))
    hashes = list(_GSM8K.finditer(text))
    if hashes:
        candidates.append((hashes[-1].start(), hashes[-1].group(1)))
    candidates = [(pos, a) for pos, a in candidates if a.strip()]
    if candidates:
        return max(candidates, key=lambda x: x[0])[1].strip()
    if fallback_last_number:
        nums = _NUMBER.findall(text)
        if nums:
            return nums[-1].rstrip(".")
    return None


# ------------------------------------------------------------------------------------------------------------
# normalisation (Hendrycks' MATH _strip_string, extended)


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac{1}2 -> \\frac{1}{2}, \\frac 59 -> \\frac{5}{9} (MATH's _fix_fracs)."""
    out, i = [], 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j + 5])
        i = j + 5
        args = []
        for _ in range(2):
            while i < len(s) and s[i] == " ":
                i += 1
            if i >= len(s):
                break
            if s[i] == "{":
                depth, k = 0, i
                while k < len(s):
                    depth += s[k] == "{"
                    depth -= s[k] == "}"
                    if depth == 0:
                        break
                    k += 1
                args.append(s[i:k + 1])
                i = k + 1
            elif s[i] == "\\":
                m = re.match(r"\\[A-Za-z]+", s[i:])
                args.append("{" + m.group(0) + "}")
                i += len(m.group(0))
            else:
                args.append("{" + s[i] + "}")
                i += 1
        out.append("".join(args))


def _fix_sqrt(s: str) -> str:
    """\\sqrt3 -> \\sqrt{3}, \\sqrt 3 -> \\sqrt{3} (MATH's _fix_sqrt)."""
    return re.sub(r"\\sqrt\s*([^{\s\[])", r"\\sqrt{\1}", s)


def _fix_slash(s: str) -> str:
    """a/b with integer a, b -> \\frac{a}{b} (MATH's _fix_a_slash_b, anywhere an integer pair is slashed)."""
    return re.sub(r"(?<![\w.}])(-?\d+)\s*/\s*(\d+)(?![\w.{])", r"\\frac{\1}{\2}", s)


_UNIT_TEXT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{\s*([^{}]*)\}")
_NO_SOLUTION = {"nosolution", "nosolutions", "none", "\\emptyset", "\\varnothing", "\\{\\}", "{}", "norealsolutions",
                "therearenosolutions", "nosuch"}


def normalize(s: str) -> str:
    """The MATH grader's normal form: no spaces, \\left/\\right, \\!, dollars, degrees, units in \\text{},
    percent; \\dfrac/\\tfrac -> \\frac with braced arguments; \\sqrt with braces; ``x = 5`` -> 5; thousands
    separators dropped from a plain number (``10,\\!080`` -> 10080, not inside a tuple); 0.5 -> \\frac{1}{2}."""
    s = s.strip().replace("\n", "")
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("~", " ")
    s = re.sub(r"(?<!\\)\\ ", " ", s)  # a LaTeX control space, not the second half of a row break \\
    s = s.replace("\\\\", "\\") if "matrix" not in s else s
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\bigl", "").replace("\\bigr", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\displaystyle", "")
    # units and words: "5.4 \text{ cents}" -> 5.4 ; "\text{Evelyn}" -> Evelyn ; "\text{(C)}" -> (C)
    m = re.fullmatch(r"\s*(.*?\S)\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}\s*", s)
    if m and re.search(r"\d", m.group(1)):
        s = m.group(1)
    s = re.sub(r"(?<=[\d}])\s*(cm|km|units?|inches|inch|feet|ft|degrees?|dollars?|cents?|sq\.?\s*units?)\s*$", "", s)
    s = _UNIT_TEXT.sub(r"\1", s)
    s = s.replace("\\dots", "").replace("\\ldots", "").replace("\\cdots", "")
    s = re.sub(r"^(?:[a-zA-Z](?:_\d)?|\\[a-z]+)\s*(=|\\in)\s*", "", s)  # x = 5, x \in [1,2]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if re.fullmatch(r"-?\d{1,3}(?:\{?,\}?\d{3})+(?:\.\d+)?", s):
        s = re.sub(r"\{?,\}?", "", s)
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_slash(s)
    m = re.fullmatch(r"\(?([A-E])\)?", s)
    if m:
        s = m.group(1)
    if s.lower() in _NO_SOLUTION:
        s = "\\emptyset"
    return s


# ------------------------------------------------------------------------------------------------------------
# structure and exact numbers


def _split_top(s: str, seps: Sequence[str] = (",",)) -> list[str]:
    parts, depth, cur, i = [], 0, "", 0
    while i < len(s):
        c = s[i]
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        if depth == 0 and any(s.startswith(sep, i) for sep in seps):
            sep = next(sep for sep in seps if s.startswith(sep, i))
            parts.append(cur)
            cur, i = "", i + len(sep)
            continue
        cur += c
        i += 1
    parts.append(cur)
    return parts


def _brackets(s: str) -> tuple[str, str, str] | None:
    """('(', inner, ']') when s is one bracketed group like (1,2] or \\{1,2\\}; None otherwise."""
    for open_, close_ in (("\\{", "\\}"), ("(", ")"), ("[", "]"), ("(", "]"), ("[", ")")):
        if s.startswith(open_) and s.endswith(close_):
            inner = s[len(open_):len(s) - len(close_)]
            depth = 0
            for c in inner:
                depth += c in "({["
                depth -= c in ")}]"
                if depth < 0:
                    return None
            if depth == 0:
                return open_, inner, close_
    return None


def _number(s: str) -> Fraction | None:
    """Exact value of a plain number: 12, -3.5, \\frac{a}{b}, -\\frac{a}{b}, mixed 1\\frac{4}{5}; else None."""
    m = re.fullmatch(r"(-?)(\d+(?:\.\d+)?)", s)
    if m:
        return Fraction(s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    if m and Fraction(m.group(3)) != 0:
        v = Fraction(m.group(2)) / Fraction(m.group(3))
        return -v if m.group(1) else v
    m = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)  # mixed number: the MATH convention
    if m and int(m.group(4)) != 0:
        v = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return -v if m.group(1) else v
    return None


def _expand_pm(s: str) -> list[str] | None:
    if s.count("\\pm") != 1:
        return None
    a, b = s.split("\\pm")
    return [f"{a}+{b}", f"{a}-{b}"] if a else [b, f"-{b}"]


def _matrix(s: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{[pbvB]?matrix\}(.*)\\end\{[pbvB]?matrix\}", s)
    if not m:
        return None
    rows = [r for r in re.split(r"\\\\", m.group(1)) if r != ""]
    return [r.split("&") for r in rows]


def _unordered_equal(a: list[str], b: list[str], timeout: float) -> bool:
    if len(a) != len(b):
        return False
    rest = list(b)
    for x in a:
        k = next((k for k, y in enumerate(rest) if _equiv_normal(x, y, timeout)), None)
        if k is None:
            return False
        rest.pop(k)
    return True


def _equiv_normal(a: str, b: str, timeout: float) -> bool:
    if a == b:
        return True
    if not a or not b:
        return False
    ma, mb = _matrix(a), _matrix(b)
    if ma is not None or mb is not None:
        return (ma is not None and mb is not None and len(ma) == len(mb)
                and all(len(ra) == len(rb) and all(_equiv_normal(x, y, timeout) for x, y in zip(ra, rb))
                        for ra, rb in zip(ma, mb)))
    # unions of intervals / sets: same pieces in any order
    ua, ub = _split_top(a, ("\\cup",)), _split_top(b, ("\\cup",))
    if len(ua) > 1 or len(ub) > 1:
        return _unordered_equal(ua, ub, timeout)
    ba, bb = _brackets(a), _brackets(b)
    if ba is not None and bb is not None:
        ea, eb = _split_top(ba[1]), _split_top(bb[1])
        if ba[0] == "\\{" and bb[0] == "\\{":  # sets: order-free, \pm expands
            return _unordered_equal(_expand_all(ea), _expand_all(eb), timeout)
        if len(ea) > 1 or len(eb) > 1:  # tuples / intervals: same brackets, elementwise in order
            return (ba[0], ba[2]) == (bb[0], bb[2]) and len(ea) == len(eb) \
                and all(_equiv_normal(x, y, timeout) for x, y in zip(ea, eb))
    ea, eb = _split_top(a), _split_top(b)
    if len(ea) > 1 or len(eb) > 1 or "\\pm" in a or "\\pm" in b:  # "1, -2" lists of solutions: order-free
        return _unordered_equal(_expand_all(ea), _expand_all(eb), timeout)
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return na == nb
    if _is_word(a) or _is_word(b):
        return a.lower() == b.lower()
    return _symbolic_equal(a, b, timeout)


def _expand_all(items: list[str]) -> list[str]:
    out = []
    for x in items:
        out.extend(_expand_pm(x) or [x])
    return out


def _is_word(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z\s\-']+|[A-E]", s)) or s == "\\emptyset"


def is_equiv(pred: str | None, gold: str, timeout: float = 5.0) -> bool:
    """True when the predicted final answer equals the gold one: normalised strings equal, or the same
    structure (tuple/interval/set/matrix/list) with equal elements, or equal exact numbers, or sympy finds
    the difference simplifies to 0 within ``timeout`` seconds (else False)."""
    if pred is None:
        return False
    if not isinstance(gold, str):
        raise TypeError(f"gold answer must be a string, got {type(gold).__name__}")
    return _equiv_cached(normalize(str(pred)), normalize(gold), float(timeout))


@lru_cache(maxsize=65536)
def _equiv_cached(a: str, b: str, timeout: float) -> bool:
    return _equiv_normal(a, b, timeout)


# ------------------------------------------------------------------------------------------------------------
# symbolic equality in a killable worker process


def _sympy_equal_impl(a: str, b: str) -> bool:
    import sympy
    from sympy.parsing.latex import parse_latex

    def parse(s: str):
        s = s.replace("\\cdot", "*").replace("\\times", "*")
        try:
            return parse_latex(s)
        except Exception:  # noqa: BLE001 - some answers are plain text math ("2*sqrt(3)")
            return sympy.sympify(s.replace("^", "**"))

    ea, eb = parse(a), parse(b)
    if getattr(ea, "is_Relational", False) or getattr(eb, "is_Relational", False):
        return False
    diff = sympy.simplify(ea - eb)
    if diff == 0:
        return True
    if not diff.free_symbols:
        value = complex(sympy.N(diff, 30))
        scale = max(1.0, abs(complex(sympy.N(eb, 30))))
        return abs(value) <= 1e-9 * scale
    return False


def _sympy_server(conn) -> None:
    while True:
        try:
            a, b = conn.recv()
        except EOFError:
            return
        try:
            conn.send(bool(_sympy_equal_impl(a, b)))
        except Exception:  # noqa: BLE001 - unparsable answers are not equal
            conn.send(False)


class _SympyWorker:
    def __init__(self):
        self._lock = threading.Lock()
        self._proc = self._conn = None
        self.restarts = 0

    def _start(self):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_sympy_server, args=(child,), daemon=True)
        self._proc.start()
        child.close()

    def _stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
        self._proc = self._conn = None

    def equal(self, a: str, b: str, timeout: float) -> bool:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._start()
                timeout += 30.0  # the first call also imports sympy and the ANTLR parser
            try:
                self._conn.send((a, b))
                if self._conn.poll(timeout):
                    return bool(self._conn.recv())
            except (EOFError, OSError):  # the worker died (EOF, reset or broken pipe): counts as not equal
                pass
            self._stop()  # hung (or died): kill it; the next call starts a fresh one
            self.restarts += 1
            return False


_WORKER = _SympyWorker()


def _symbolic_equal(a: str, b: str, timeout: float) -> bool:
    return _WORKER.equal(a, b, timeout)


# ------------------------------------------------------------------------------------------------------------
# reward


def math_reward(responses: Sequence[str], examples: Sequence[dict], fallback_last_number: bool = True,
                timeout: float = 5.0) -> list[float]:
    """r = 1 if the response's final answer (``extract_answer_math``) is equivalent to ``example["answer"]``
    (``is_equiv``), else 0. The same check is the accuracy metric of evaluation."""
    if len(responses) != len(examples):
        raise ValueError(f"math_reward: {len(responses)} responses but {len(examples)} examples")
    out = []
    for i, (r, ex) in enumerate(zip(responses, examples)):
        if not isinstance(ex, dict) or not isinstance(ex.get("answer"), str):
            raise ValueError(f"math_reward: examples[{i}] needs a string 'answer', got {ex!r:.200}")
        pred = extract_answer_math(r, fallback_last_number=fallback_last_number)
        out.append(1.0 if is_equiv(pred, ex["answer"], timeout=timeout) else 0.0)
    return out
