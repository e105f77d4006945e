"""`iotwasm rules enable|disable`: switch streaming rules on and off, by name or by tag, and the
table of rules they print (`get rules` too).

Split from `client` (the config file, the connection to a node and the output every command
shares); rules are listed and described by the verbs of `objects` (`get rules`,
`describe rule NAME`).
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from .client import CONTEXT, OUTPUT, Client, make_table, emit, fail


def rules_table(items: list[dict]) -> Table:
    """Rules as `iotwasm rules list` and `iotwasm get all` list them."""
    return make_table(None, ["name", "namespace", "state", "tags", "received", "matched", "emitted", "errors",
                         "late", "last error"],
                  [[r["name"], r["namespace"], r["state"], ", ".join(r["tags"]) or "-", r["received"],
                    r["matched"], r["emitted"], r["errors"] + r["udf_errors"] + r["decode_errors"], r["late"],
                    r["last_error"]] for r in items])


rules_app = typer.Typer(no_args_is_help=True, help="Enable or disable streaming rules (list them with "
                                                   "`get rules`).")


def _switch_rules(enabled: bool, name: str | None, tag: str | None, context: str | None, output: str) -> None:
    if (name is None) == (tag is None):
        fail("give a rule NAME or --tag TAG (not both)")
    verb = "enable" if enabled else "disable"
    c = Client(context)
    if name is not None:
        data = c.call("POST", f"/v1/rules/{name}/{verb}")
        emit(data, output, rules_table([data]))
        return
    data = c.call("POST", f"/v1/rules/{verb}", json={"tag": tag})
    emit(data, output, make_table(None, [f"{verb}d (tag {tag})"], [[n] for n in data["changed"]] or [["none"]]))


@rules_app.command("enable")
def rules_enable(name: Optional[str] = typer.Argument(None, help="rule"),
                 tag: Optional[str] = typer.Option(None, "--tag", help="every rule with this tag"),
                 context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Enable a rule, or every rule with a tag."""
    _switch_rules(True, name, tag, context, output)


@rules_app.command("disable")
def rules_disable(name: Optional[str] = typer.Argument(None, help="rule"),
                  tag: Optional[str] = typer.Option(None, "--tag", help="every rule with this tag"),
                  context: Optional[str] = CONTEXT, output: str = OUTPUT) -> None:
    """Disable a rule, or every rule with a tag (they stop evaluating; window state is kept)."""
    _switch_rules(False, name, tag, context, output)
