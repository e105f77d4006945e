"""The rule language: a small SQL dialect over streams, parsed with a lark LALR(1) grammar.

    SELECT device, avg(temperature) AS t, window_end() AS at
    FROM "sensors/{device}/climate"
    WHERE temperature IS NOT NULL
    GROUP BY device, TUMBLINGWINDOW(ss, 10)
    HAVING t > 30

Why a grammar (lark) rather than a general SQL parser: the dialect is small and fixed, the
grammar is the specification (one page, below), LALR parsing is linear and fast, and every
token keeps its line and column, so syntax errors and semantic errors (unknown function,
wrong window arguments) both point at the place. General SQL parsers accept far more than
the engine can run and report positions less precisely.

The parser produces a plain tree of `Node`s; `compiler.py` turns it into closures once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lark import Lark, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ...errors import ConfigError

GRAMMAR = r"""
start: _SELECT select_list _FROM source where? group_by? having?

select_list: select_item ("," select_item)*
select_item: STAR                        -> star
           | expr (_AS? alias)?           -> item
alias: NAME | QUOTED

source: QUOTED | STRING | NAME
where: _WHERE expr
group_by: _GROUP _BY expr ("," expr)*
having: _HAVING expr

?expr: or_expr
?or_expr: and_expr | or_expr _OR and_expr        -> or_
?and_expr: not_expr | and_expr _AND not_expr     -> and_
?not_expr: predicate | _NOT not_expr             -> not_
?predicate: sum
    | sum COMP sum                               -> compare
    | sum _IS _NULL                              -> is_null
    | sum _IS _NOT _NULL                         -> is_not_null
    | sum _IN "(" expr ("," expr)* ")"           -> in_
    | sum _NOT _IN "(" expr ("," expr)* ")"      -> not_in
    | sum _BETWEEN sum _AND sum                  -> between
    | sum _NOT _BETWEEN sum _AND sum             -> not_between
    | sum _LIKE sum                              -> like
    | sum _NOT _LIKE sum                         -> not_like
?sum: product | sum ADDOP product                -> binop
?product: unary | product MULOP unary            -> binop
    | product STAR unary                         -> binop
?unary: atom | "-" unary                         -> neg
?atom: NUMBER                                    -> number
    | STRING                                     -> string
    | _TRUE                                      -> true
    | _FALSE                                     -> false
    | _NULL                                      -> null
    | NAME "(" ")"                               -> call
    | NAME "(" STAR ")"                          -> call_star
    | NAME "(" _DISTINCT expr ")"                -> call_distinct
    | NAME "(" expr ("," expr)* ")"              -> call
    | column
    | case
    | "(" expr ")"
column: (NAME | QUOTED) ("." (NAME | QUOTED))*
case: _CASE expr? when+ (_ELSE expr)? _END
when: _WHEN expr _THEN expr

COMP: "=" | "==" | "!=" | "<>" | "<=" | ">=" | "<" | ">"
ADDOP: "+" | "-" | "||"
MULOP: "/" | "%"
STAR: "*"

_SELECT: /select\b/i
_FROM: /from\b/i
_WHERE: /where\b/i
_GROUP: /group\b/i
_BY: /by\b/i
_HAVING: /having\b/i
_AS: /as\b/i
_AND: /and\b/i
_OR: /or\b/i
_NOT: /not\b/i
_IS: /is\b/i
_NULL: /null\b/i
_IN: /in\b/i
_BETWEEN: /between\b/i
_LIKE: /like\b/i
_TRUE: /true\b/i
_FALSE: /false\b/i
_CASE: /case\b/i
_WHEN: /when\b/i
_THEN: /then\b/i
_ELSE: /else\b/i
_END: /end\b/i
_DISTINCT: /distinct\b/i

NAME: /[A-Za-z_][A-Za-z0-9_]*/
QUOTED: /"[^"]*"/ | /`[^`]*`/
STRING: /'([^']|'')*'/
NUMBER: /\d+(\.\d*)?([eE][+-]?\d+)?/ | /\.\d+([eE][+-]?\d+)?/

%import common.WS
COMMENT: /--[^\n]*/
%ignore WS
%ignore COMMENT
"""

# keywords win over NAME when both match the same text
for _kw in ("SELECT FROM WHERE GROUP BY HAVING AS AND OR NOT IS NULL IN BETWEEN LIKE TRUE "
            "FALSE CASE WHEN THEN ELSE END DISTINCT").split():
    GRAMMAR = GRAMMAR.replace(f"_{_kw}: /", f"_{_kw}.2: /", 1)

_PARSER = Lark(GRAMMAR, parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=False)


class RuleSyntaxError(ConfigError):
    """A rule that does not parse or does not make sense, with its line and column (1-based)."""

    kind = "rule_syntax"

    def __init__(self, message: str, line: int, column: int, rule: str = ""):
        self.line, self.column, self.rule = line, column, rule
        where = f"rule {rule} " if rule else ""
        super().__init__(f"{where}line {line}, column {column}: {message}")


@dataclass(slots=True)
class Node:
    """One expression: `kind` names it, `args` are child nodes or values."""

    kind: str
    args: tuple
    line: int = 0
    column: int = 0
    text: str = ""  # the source text, for default output names such as avg(temperature)

    def __repr__(self) -> str:
        return f"{self.kind}{self.args!r}"


@dataclass
class Query:
    items: list[tuple[Node | None, str | None]]     # (expr, alias); (None, None) is *
    source: str
    source_pos: tuple[int, int]
    where: Node | None = None
    group_by: list[Node] = field(default_factory=list)
    having: Node | None = None
    text: str = ""


def _pos(meta_or_tok: Any) -> tuple[int, int]:
    return getattr(meta_or_tok, "line", 0) or 0, getattr(meta_or_tok, "column", 0) or 0


def _unquote(tok: str) -> str:
    if tok[:1] in "\"`":
        return tok[1:-1]
    if tok[:1] == "'":
        return tok[1:-1].replace("''", "'")
    return tok


@v_args(meta=True)
class _Build(Transformer):
    def __init__(self, text: str):
        super().__init__()
        self._text = text

    def _n(self, kind: str, meta, *args) -> Node:
        line, col = _pos(meta)
        text = ""
        if not getattr(meta, "empty", True):
            text = self._text[meta.start_pos:meta.end_pos]
        return Node(kind, tuple(args), line, col, text)

    def number(self, meta, c):
        v = float(c[0]) if any(ch in c[0] for ch in ".eE") else int(c[0])
        return self._n("lit", meta, v)

    def string(self, meta, c):
        return self._n("lit", meta, _unquote(c[0]))

    def true(self, meta, c):
        return self._n("lit", meta, True)

    def false(self, meta, c):
        return self._n("lit", meta, False)

    def null(self, meta, c):
        return self._n("lit", meta, None)

    def column(self, meta, c):
        return self._n("col", meta, *[_unquote(str(t)) for t in c])

    def call(self, meta, c):
        return self._n("call", meta, str(c[0]).lower(), tuple(c[1:]), False)

    def call_star(self, meta, c):
        return self._n("call", meta, str(c[0]).lower(), (), True)

    def call_distinct(self, meta, c):
        return self._n("call", meta, str(c[0]).lower() + "_distinct", (c[1],), False)

    def binop(self, meta, c):
        return self._n("binop", meta, str(c[1]), c[0], c[2])

    def compare(self, meta, c):
        op = {"==": "=", "<>": "!="}.get(str(c[1]), str(c[1]))
        return self._n("cmp", meta, op, c[0], c[2])

    def neg(self, meta, c):
        return self._n("neg", meta, c[0])

    def or_(self, meta, c):
        return self._n("or", meta, c[0], c[1])

    def and_(self, meta, c):
        return self._n("and", meta, c[0], c[1])

    def not_(self, meta, c):
        return self._n("not", meta, c[0])

    def is_null(self, meta, c):
        return self._n("isnull", meta, c[0])

    def is_not_null(self, meta, c):
        return self._n("not", meta, self._n("isnull", meta, c[0]))

    def in_(self, meta, c):
        return self._n("in", meta, c[0], tuple(c[1:]))

    def not_in(self, meta, c):
        return self._n("not", meta, self.in_(meta, c))

    def between(self, meta, c):
        return self._n("between", meta, c[0], c[1], c[2])

    def not_between(self, meta, c):
        return self._n("not", meta, self.between(meta, c))

    def like(self, meta, c):
        return self._n("like", meta, c[0], c[1])

    def not_like(self, meta, c):
        return self._n("not", meta, self.like(meta, c))

    def when(self, meta, c):
        return (c[0], c[1])

    def case(self, meta, c):
        subject = None
        whens, default = [], None
        rest = list(c)
        if rest and isinstance(rest[0], Node):
            subject = rest.pop(0)
        while rest and isinstance(rest[0], tuple):
            whens.append(rest.pop(0))
        if rest:
            default = rest.pop(0)
        return self._n("case", meta, subject, tuple(whens), default)

    # clauses
    def alias(self, meta, c):
        return _unquote(str(c[0]))

    def star(self, meta, c):
        return (None, None)

    def item(self, meta, c):
        return (c[0], c[1] if len(c) > 1 else None)

    def select_list(self, meta, c):
        return ("items", list(c))

    def source(self, meta, c):
        return ("source", _unquote(str(c[0])), _pos(c[0]))

    def where(self, meta, c):
        return ("where", c[0])

    def group_by(self, meta, c):
        return ("group_by", list(c))

    def having(self, meta, c):
        return ("having", c[0])

    def start(self, meta, c):
        parts = {p[0]: p[1:] for p in c}
        src, pos = parts["source"]
        return Query(items=parts["items"][0], source=src, source_pos=pos,
                     where=parts.get("where", (None,))[0], group_by=parts.get("group_by", ([],))[0],
                     having=parts.get("having", (None,))[0], text=self._text)


_NAMES = {"_SELECT": "SELECT", "_FROM": "FROM", "_WHERE": "WHERE", "_GROUP": "GROUP", "_BY": "BY",
          "_HAVING": "HAVING", "_AS": "AS", "_AND": "AND", "_OR": "OR", "_NOT": "NOT", "_END": "END",
          "_THEN": "THEN", "_WHEN": "WHEN", "_ELSE": "ELSE", "LPAR": "'('", "RPAR": "')'",
          "COMMA": "','", "NAME": "a name", "NUMBER": "a number", "STRING": "a 'string'",
          "QUOTED": 'a "quoted" name', "$END": "the end", "COMP": "a comparison", "DOT": "'.'",
          "MINUS": "'-'", "_CASE": "CASE", "_NULL": "NULL", "_TRUE": "TRUE", "_FALSE": "FALSE"}


def _expected(names) -> str:
    shown = sorted({_NAMES.get(n, n.lstrip("_")) for n in names})
    if len(shown) > 6:
        shown = shown[:6] + ["…"]
    return ", ".join(shown)


def parse(text: str, rule: str = "") -> Query:
    """Parse one rule; raise RuleSyntaxError with the line and column of the first problem."""
    try:
        tree = _PARSER.parse(text)
    except UnexpectedToken as e:
        if e.token.type == "$END":
            stripped = text.rstrip()
            raise RuleSyntaxError(f"the rule ends too early; expected {_expected(e.expected)}",
                                  stripped.count("\n") + 1, len(stripped.rsplit("\n", 1)[-1]) + 1,
                                  rule) from None
        raise RuleSyntaxError(f"unexpected {str(e.token)!r}; expected {_expected(e.expected)}",
                              e.line, e.column, rule) from None
    except UnexpectedCharacters as e:
        raise RuleSyntaxError(f"unexpected character {e.char!r}", e.line, e.column,
                              rule) from None
    except UnexpectedEOF as e:
        lines = text.split("\n")
        raise RuleSyntaxError(f"the rule ends too early; expected {_expected(e.expected)}",
                              len(lines), len(lines[-1]) + 1, rule) from None
    except UnexpectedInput as e:  # pragma: no cover - the three above are exhaustive for LALR
        raise RuleSyntaxError(str(e).splitlines()[0], getattr(e, "line", 0), getattr(e, "column", 0),
                              rule) from None
    return _Build(text).transform(tree)
