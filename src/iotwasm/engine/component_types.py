"""Component function types written as WIT, for `inspect` and for checking a processor's exports."""

from __future__ import annotations

import wasmtime.component as wc

#: the exports of `iotwasm:module/processor`, as `render_func` writes them
EXPORTS = {
    "setup": "func() -> result<_, string>",
    "process": "func(batch: string) -> result<string, string>",
}

_SIMPLE: dict[type, str] = {wc.Bool: "bool", wc.S8: "s8", wc.S16: "s16", wc.S32: "s32", wc.S64: "s64",
           wc.U8: "u8", wc.U16: "u16", wc.U32: "u32", wc.U64: "u64", wc.F32: "f32",
           wc.F64: "f64", wc.Char: "char", wc.String: "string"}


def render_type(ty: object) -> str:
    """A component value type in WIT syntax (named types are written out structurally)."""
    simple = _SIMPLE.get(type(ty))
    if simple is not None:
        return simple
    if isinstance(ty, wc.ListType):
        return f"list<{render_type(ty.element)}>"
    if isinstance(ty, wc.OptionType):
        return f"option<{render_type(ty.payload)}>"
    if isinstance(ty, wc.ResultType):
        ok = "_" if ty.ok is None else render_type(ty.ok)
        err = "_" if ty.err is None else render_type(ty.err)
        return f"result<{ok}, {err}>"
    if isinstance(ty, wc.TupleType):
        return f"tuple<{', '.join(render_type(e) for e in ty.elements)}>"
    if isinstance(ty, wc.EnumType):
        return f"enum {{ {', '.join(ty.names)} }}"
    if isinstance(ty, wc.RecordType):
        return f"record {{ {', '.join(f'{n}: {render_type(t)}' for n, t in ty.fields)} }}"
    if isinstance(ty, wc.VariantType):
        cases = [n if t is None else f"{n}({render_type(t)})" for n, t in ty.cases]
        return f"variant {{ {', '.join(cases)} }}"
    if isinstance(ty, wc.FlagsType):
        return f"flags {{ {', '.join(ty.names)} }}"
    return type(ty).__name__.lower()


def render_func(fty: wc.FuncType) -> str:
    params = ", ".join(f"{n}: {render_type(t)}" for n, t in fty.params)
    result = fty.result
    return f"func({params})" + ("" if result is None else f" -> {render_type(result)}")
