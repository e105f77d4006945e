"""YAML from people who may not mean well, read within bounds.

PyYAML's safe loader builds whatever a text describes: a kilobyte of nested aliases stands for
billions of values (and anything that formats them — an error message — for gigabytes), and a
few thousand nested levels end its recursive composer in a RecursionError. `load_all` refuses,
with the line and column, a document nesting deeper than `MAX_DEPTH` levels (aliases followed,
a self-referencing alias included) or expanding, every alias counted in full, past
`MAX_EXPANDED` values and characters — before anything is built from it. `excerpt` renders a
value for a message without rendering all of it.
"""

from __future__ import annotations

from typing import Any

import yaml

#: how deep a document may nest (mappings and lists, aliases followed)
MAX_DEPTH = 64
#: how large a document may become once its aliases are expanded: values plus characters
MAX_EXPANDED = 4 * 1024 * 1024
#: the longest piece of its input a message quotes
EXCERPT = 80


def excerpt(value: Any, limit: int = EXCERPT, quote: bool = False) -> str:
    """`value` as text for a message (a string in quotes with `quote`), cut to `limit`
    characters. Containers are never rendered whole: a document's aliases may make them
    enormous."""
    if isinstance(value, (dict, list)):
        return f"<a {'mapping' if isinstance(value, dict) else 'list'}>"
    text = repr(value) if quote or not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


class DocumentTooLarge(yaml.MarkedYAMLError):
    """A document nests too deep or expands, through its aliases, beyond the bounds."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with nesting and alias expansion bounded (before anything is built
    from a document, and before the composer could recurse into a RecursionError)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise DocumentTooLarge(problem=f"nested deeper than {MAX_DEPTH} levels",
                                       problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        _expanded_size(node, {}, 1)
        return super().construct_document(node)


def _expanded_size(node: Any, sizes: dict[int, int], depth: int) -> int:
    """Values plus characters of `node` with every alias expanded (each shared node is
    counted once per use, but measured once); raises DocumentTooLarge past the bounds."""
    if depth > MAX_DEPTH:
        raise DocumentTooLarge(problem=f"nested deeper than {MAX_DEPTH} levels (aliases followed)",
                               problem_mark=node.start_mark)
    known = sizes.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, depth + 1) for child in node.value)
    else:
        size = 1 + sum(_expanded_size(k, sizes, depth + 1) + _expanded_size(v, sizes, depth + 1)
                       for k, v in node.value)
    if size > MAX_EXPANDED:
        raise DocumentTooLarge(problem=f"expands to more than {MAX_EXPANDED:,} values and characters "
                                       "(aliases counted in full)", problem_mark=node.start_mark)
    sizes[id(node)] = size
    return size


def load_all(text: str) -> list[Any]:
    """Every document of `text`; yaml.YAMLError (DocumentTooLarge past the bounds)."""
    return list(yaml.load_all(text, Loader=_BoundedLoader))
