"""Final-answer extraction and the MATH grader's string normalisation (Hendrycks et al. 2021,
``math_equivalence._strip_string``, extended). Every function here is linear in its input (no nested
quantifier in a regex, no rescanning per candidate), because a response is untrusted text."""

from __future__ import annotations

import re

# -- extraction -------------------------------------------------------------------------------------------------

_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)[ \t]*\{|\\(?:boxed|fbox) |\\[{}]|[{}]")


def last_boxed(text: str) -> str | None:
    """Content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` that is closed (nested braces balanced; ``\\{``
    and ``\\}`` do not count), or of ``\\boxed x`` up to the end of its line or a ``$``; None when there is
    none. One left-to-right pass with a stack of open braces, so unclosed boxes cost nothing extra."""
    stack: list[int | None] = []  # per open brace: where its box's content starts, or None for a plain brace
    best: tuple[int, str | None] | None = None  # (start of the box, its content)
    for m in _BOX_TOKENS.finditer(text):
        tok = m.group(0)
        if tok.endswith("{") and tok.startswith("\\") and len(tok) > 2:
            stack.append(m.end())
        elif tok.endswith(" ") and tok.startswith("\\"):
            rest = re.split(r"[$\n]", text[m.end():m.end() + 10000], maxsplit=1)[0].strip()
            best = (m.end(), rest or None)
        elif tok == "{":
            stack.append(None)
        elif tok == "}" and stack:
            start = stack.pop()
            if start is not None and (best is None or start > best[0]):
                best = (start, text[start:m.start()].strip())
    return None if best is None else best[1]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_HOPE = "i hope it is correct"


def _final_answer_line(text: str) -> tuple[int, str] | None:
    """The paper's "The final answer is $X$. I hope it is correct." (last one): (position, X)."""
    at = text.lower().rfind("final answer is")
    if at < 0:
        return None
    end = text.find("\n", at)
    line = text[at + len("final answer is"):end if end >= 0 else len(text)].strip()
    low = line.lower()
    if low.endswith(_HOPE + ".") or low.endswith(_HOPE):
        line = line[:low.rfind(_HOPE)].strip()
    if line.endswith("."):
        line = line[:-1].strip()
    if len(line) >= 2 and line.startswith("$") and line.endswith("$"):
        line = line[1:-1].strip()
    inner = last_boxed(line)
    return at, inner if inner is not None else line


def extract_answer_math(text: str, fallback_last_number: bool = True) -> str | None:
    """The final answer of a response, or None.

    Looks for, and takes whichever starts LAST in the text: the last ``\\boxed{...}``/``\\fbox{...}``; the
    paper's "Final Answer: The final answer is $X$. I hope it is correct."; GSM8K's ``#### X``. Without any of
    them, the last number in the text if ``fallback_last_number`` (else None).
    """
    candidates = []
    boxed_at = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if boxed_at >= 0:
        b = last_boxed(text)
        if b is not None:
            candidates.append((boxed_at, b))
    final = _final_answer_line(text)
    if final is not None:
        candidates.append(final)
    at = text.rfind("####")
    if at >= 0:
        end = text.find("\n", at)
        candidates.append((at, text[at + 4:end if end >= 0 else len(text)].strip()))
    candidates = [(pos, a) for pos, a in candidates if a.strip()]
    if candidates:
        return max(candidates, key=lambda x: x[0])[1].strip()
    if fallback_last_number:
        last = None
        for last in _NUMBER.finditer(text):
            pass
        if last is not None:
            return last.group(0).rstrip(".")
    return None


# -- normalisation ----------------------------------------------------------------------------------------------

_UNIT_WORDS = (r"cm|km|units?|inches|inch|feet|ft|miles?|meters?|degrees?|dollars?|cents?|hours?|minutes?|"
               r"seconds?|days?|sq\.?\s*units?|square\s*units?|mph")
_TRAILING_TEXT = re.compile(r"(.*?\S)\s*\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?[23]\}?)?")
_TRAILING_UNIT = re.compile(rf"(?<=[\d}}])\s*(?:{_UNIT_WORDS})(?:\^\{{?[23]\}}?)?\s*$")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{\s*([^{}]*)\}")
_NO_SOLUTION = {"nosolution", "nosolutions", "none", "\\emptyset", "\\varnothing", "\\{\\}", "{}",
                "norealsolutions", "therearenosolutions", "nosuch"}
_SPACES = ("\\!", "\\,", "\\;", "\\:")  # thin spaces (U+2009, U+202F, U+00A0) are whitespace: \s below


def normalize(s: str) -> str:
    """The MATH grader's normal form, as a string: no spaces (thin spaces and ``\\,``/``\\!`` included),
    ``\\left``/``\\right``, dollars, degrees, percent signs, a trailing unit (``\\text{ cm}^2``, ``inches``);
    ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\text{X}`` -> X; ``x = 5`` and ``5 = x`` -> 5; U+2212 -> ``-``;
    thousands separators dropped from a plain number (``10,\\!080`` -> 10080); ``(C)`` -> C; no-solution
    words -> ``\\emptyset``."""
    s = s.strip().replace("\n", " ").replace("\u2212", "-").replace("\u221e", "\\infty")
    for sp in _SPACES:
        s = s.replace(sp, "")
    s = s.replace("~", " ")
    s = re.sub(r"(?<!\\)\\ ", " ", s)  # a LaTeX control space, not the second half of a row break \\
    s = s.replace("\\\\", "\\") if "matrix" not in s else s
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    for cmd in ("\\left", "\\right", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\displaystyle"):
        s = s.replace(cmd, "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    m = _TRAILING_TEXT.fullmatch(s.strip())  # "5.4 \text{ cents}" -> 5.4 ; but "\text{Evelyn}" stays
    if m and re.search(r"\d", m.group(1)):
        s = m.group(1)
    s = _TRAILING_UNIT.sub("", s)
    s = _TEXT.sub(r"\1", s)
    s = s.replace("\\dots", "").replace("\\ldots", "").replace("\\cdots", "")
    s = re.sub(r"^(?:[a-zA-Z](?:_\d)?|\\[a-z]+)\s*(=|\\in)\s*", "", s)  # x = 5, x \in [1,2]
    s = re.sub(r"\s*=\s*[a-zA-Z](?:_\d)?\s*$", "", s)  # 5 = x
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)  # 4210_{5} -> 4210_5
    s = re.sub(r"\s+", "", s)  # every Unicode space, so a thin space between thousands joins them
    if re.fullmatch(r"-?\d{1,3}(?:\{?,\}?\d{3})+(?:\.\d+)?", s):
        s = re.sub(r"\{?,\}?", "", s)
    m = re.fullmatch(r"\(?([A-E])\)?", s)
    if m:
        s = m.group(1)
    if s.lower() in _NO_SOLUTION:
        s = "\\emptyset"
    return s
