"""A parser for final answers: LaTeX/plain math text -> a small expression tree of tuples. It never evaluates
text: the only things built are tuples, ``Fraction`` s of parsed digit strings and names of a fixed table.

Grammar (after ``tasks.math_grading.normalize``, which removed spaces, ``\\left``/``\\right``, units and dollars)::

    expr    := term (('+' | '-') term)*
    term    := factor (('*' | '\\cdot' | '\\times' | '/' | '\\div') factor | factor)*   # juxtaposition = product
    factor  := ('-' | '+') factor | postfix ('^' script)?                             # -2^2 = -(2^2); a^b^c = a^(b^c)
    postfix := primary '!'*
    primary := NUMBER ['\\frac' INT INT]       # 1\\frac{4}{5} is the mixed number 9/5 (MATH's convention)
             | LETTER ['_' script] | GREEK | '\\pi' | '\\infty' | 'e' (Euler's number) | 'i' (imaginary unit)
             | '(' expr ')' | '{' expr '}' | '|' expr '|'
             | '\\frac' arg arg | '\\sqrt' ['[' expr ']'] arg | FUNC ['^' script] arg | '\\log' ['_' script] arg
    arg     := '{' expr '}' | one token (``\\frac12`` = 1/2: a digit string gives one digit)
    NUMBER  := digits ['.' digits] [('e'|'E') ['+'|'-'] digits] | '.' digits      (read exactly, as a fraction)

Nodes: ("num", Fraction, is_decimal), ("sym", name), ("const", "pi"|"E"|"I"|"oo"), ("add", a, b),
("sub", a, b), ("mul", a, b), ("div", a, b), ("neg", a), ("pow", a, b), ("root", a, n), ("fn", name, a),
("log", base | None, a), ("fact", a), ("abs", a).

Size guards (``ParseError``): at most ``MAX_CHARS`` characters, ``MAX_DEPTH`` nested groups and
``MAX_DIGITS`` digits in one number.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 1000
MAX_DEPTH = 40
MAX_DIGITS = 1000


class ParseError(ValueError):
    """The text is not an expression of the grammar (or is over a size guard)."""


FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh",
         "ln", "exp"}
GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "kappa",
         "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "phi", "varphi", "chi", "psi", "omega", "Gamma",
         "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega"}
OTHER = {"frac", "sqrt", "pi", "infty", "cdot", "times", "div", "log"}
# longest first, so "\cotx" (spaces were removed) reads as \cot x and "\pix" as \pi x
COMMANDS = sorted(FUNCS | GREEK | OTHER, key=len, reverse=True)
UNICODE = {"\u00b2": "^2", "\u00b3": "^3", "\u03c0": "\\pi", "\u221a": "\\sqrt", "\u00d7": "\\times",
           "\u00b7": "\\cdot", "\u22c5": "\\cdot", "\u00f7": "\\div"}

_NUM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?")
_CMD = re.compile(r"\\([A-Za-z]+)")


def tokenize(s: str) -> list[tuple[str, str]]:
    """(kind, text) with kind in num / cmd / letter / op."""
    if len(s) > MAX_CHARS:
        raise ParseError(f"longer than {MAX_CHARS} characters")
    for k, v in UNICODE.items():
        s = s.replace(k, v)
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c.isspace():
            i += 1
            continue
        m = _NUM.match(s, i) if c.isdigit() or c == "." else None
        if m:
            if len(m.group(1)) > MAX_DIGITS or len(m.group(2) or "") > 4 or abs(int(m.group(2) or 0)) > MAX_DIGITS:
                raise ParseError(f"a number over {MAX_DIGITS} digits")
            out.append(("num", m.group(0)))
            i = m.end()
            continue
        if c == "\\":
            m = _CMD.match(s, i)
            if not m:
                raise ParseError(f"unexpected {s[i:i + 2]!r}")
            word = m.group(1)
            name = next((n for n in COMMANDS if word.startswith(n)), None)
            if name is None:
                raise ParseError(f"unknown command \\{word}")
            out.append(("cmd", name))
            i += 1 + len(name)
            continue
        if c.isascii() and c.isalpha():
            out.append(("letter", c))
        elif c in "+-*/^_()[]{}|!":
            out.append(("op", c))
        else:
            raise ParseError(f"unexpected character {c!r}")
        i += 1
    return out


def number(text: str) -> tuple:
    """("num", exact value, is_decimal) of a NUMBER token: 1.25 -> 5/4, 1e3 -> 1000, .5 -> 1/2."""
    m = _NUM.fullmatch(text)
    mant, exp = m.group(1), int(m.group(2) or 0)
    whole, _, frac = mant.partition(".")
    value = Fraction(int((whole or "0") + frac), 10 ** len(frac))
    value *= Fraction(10) ** exp
    return ("num", value, bool(frac) or m.group(2) is not None)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]):
        self.t, self.i, self.depth = tokens, 0, 0

    def peek(self, k: int = 0):
        j = self.i + k
        return self.t[j] if j < len(self.t) else ("end", "")

    def take(self, kind: str | None = None, text: str | None = None):
        tok = self.peek()
        if (kind and tok[0] != kind) or (text is not None and tok[1] != text):
            raise ParseError(f"expected {text or kind}, got {tok[1] or 'end'}")
        self.i += 1
        return tok

    def at(self, kind: str, text: str) -> bool:
        return self.peek() == (kind, text)

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError(f"nested deeper than {MAX_DEPTH}")

    def group(self, close: str):
        self.nest()
        e = self.expr()
        self.take("op", close)
        self.depth -= 1
        return e

    def expr(self):
        e = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            e = ("add" if op == "+" else "sub", e, self.term())
        return e

    def starts_primary(self) -> bool:
        kind, text = self.peek()
        return kind in ("num", "letter") or (kind == "op" and text in "({") or (
            kind == "cmd" and text not in ("cdot", "times", "div"))

    def term(self):
        e = self.factor()
        while True:
            kind, text = self.peek()
            if (kind, text) in (("op", "*"), ("cmd", "cdot"), ("cmd", "times")):
                self.take()
                e = ("mul", e, self.factor())
            elif (kind, text) in (("op", "/"), ("cmd", "div")):
                self.take()
                e = ("div", e, self.factor())
            elif self.starts_primary():
                e = ("mul", e, self.factor())
            else:
                return e

    def factor(self):
        if self.peek() in (("op", "-"), ("op", "+")):
            op = self.take()[1]
            self.nest()
            f = self.factor()
            self.depth -= 1
            return ("neg", f) if op == "-" else f
        base = self.postfix()
        if self.at("op", "^"):
            self.take()
            return ("pow", base, self.script())
        return base

    def script(self):
        """A superscript/subscript: {expr}, (expr), -x, or one token (x^23 is x^2 * 3, as in LaTeX)."""
        if self.at("op", "-"):
            self.take()
            self.nest()
            s = ("neg", self.script())
            self.depth -= 1
            return s
        e = self.arg()
        if self.at("op", "^"):  # a^b^c = a^(b^c)
            self.take()
            return ("pow", e, self.script())
        return e

    def arg(self):
        kind, text = self.peek()
        if (kind, text) == ("op", "{"):
            self.take()
            return self.group("}")
        if (kind, text) == ("op", "("):
            self.take()
            return self.group(")")
        if kind == "num" and len(text) > 1 and text[0].isdigit():
            self.t[self.i] = ("num", text[1:])  # \frac12: one digit is the argument, the rest stays
            return number(text[0])
        return self.primary()

    def postfix(self):
        e = self.primary()
        while self.at("op", "!"):
            self.take()
            e = ("fact", e)
        return e

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return self.mixed(number(text))
        if kind == "letter":
            if text == "e":
                return ("const", "E")
            if text == "i":
                return ("const", "I")
            if self.at("op", "_"):
                self.take()
                sub = self.take()
                if sub[0] == "op" and sub[1] == "{":
                    sub = self.take()
                    self.take("op", "}")
                if sub[0] not in ("num", "letter"):
                    raise ParseError("a subscript must be a number or a letter")
                if sub[0] == "num" and not sub[1].isdigit():
                    raise ParseError("a subscript must be whole")
                return ("sym", f"{text}_{sub[1]}")
            return ("sym", text)
        if kind == "op" and text in "({":
            return self.group(")" if text == "(" else "}")
        if kind == "op" and text == "|":
            self.nest()
            e = self.expr()
            self.take("op", "|")
            self.depth -= 1
            return ("abs", e)
        if kind == "cmd":
            return self.command(text)
        raise ParseError(f"unexpected {text or 'end'}")

    def mixed(self, num: tuple):
        """An integer followed by \\frac of two integers is a mixed number (1\\frac{4}{5} = 9/5)."""
        if num[2] or num[1].denominator != 1 or not self.at("cmd", "frac"):
            return num
        save = self.i, list(self.t)
        self.take()
        a, b = self.arg(), self.arg()
        if all(x[0] == "num" and not x[2] and x[1].denominator == 1 for x in (a, b)) and b[1] != 0:
            return ("num", num[1] + a[1] / b[1], False)
        self.i, self.t = save
        return num

    def command(self, name: str):
        if name == "frac":
            return ("div", self.arg(), self.arg())
        if name == "sqrt":
            if self.at("op", "["):
                self.take()
                n = self.group("]")
                return ("root", self.arg(), n)
            return ("root", self.arg(), ("num", Fraction(2), False))
        if name == "pi":
            return ("const", "pi")
        if name == "infty":
            return ("const", "oo")
        if name in GREEK:
            return ("sym", name)
        if name == "log":
            base = None
            if self.at("op", "_"):
                self.take()
                base = self.arg()
            return ("log", base, self.fn_arg())
        if name in FUNCS:
            power = None
            if self.at("op", "^"):
                self.take()
                power = self.script()
            f = ("log", None, self.fn_arg()) if name == "ln" else ("fn", name, self.fn_arg())
            return ("pow", f, power) if power is not None else f
        raise ParseError(f"\\{name} cannot start a term")

    def fn_arg(self):
        """A function's argument: (expr), {expr}, or the next factor (\\sin x^2 = sin(x^2))."""
        if self.peek() in (("op", "("), ("op", "{")):
            return self.arg()
        self.nest()
        f = self.factor()
        self.depth -= 1
        return f


def parse(s: str) -> tuple:
    """The expression tree of ``s`` (see the module's grammar); ParseError when it is not one."""
    p = _Parser(tokenize(s))
    if not p.t:
        raise ParseError("empty")
    e = p.expr()
    if p.i != len(p.t):
        raise ParseError(f"unexpected {p.peek()[1]!r} after the expression")
    return e
