"""Griffe extension used by the docs build: the docstrings' Sphinx roles become cross-references.

The docstrings mark names with Sphinx's inline roles (``:class:`~hiedit_env.action.ActionError```,
``:meth:`objective```), which Markdown would print as they are. Each becomes an *optional* autorefs
link: a link where the site documents the target, plain code where it does not (a private helper,
another library), so a role can never break the strict build. Relative names are resolved in the
scope of the object whose docstring holds them. No package converts Sphinx roles for mkdocstrings,
hence these few lines.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`(~?)([\w.]+)(?:\(\))?`")


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:  # an imported name: its own module documents it
            yield from _objects(member)


def _target(scope: griffe.Object, name: str) -> str:
    """The full path of ``name`` seen from ``scope`` (itself when it cannot be resolved)."""
    head, _, rest = name.partition(".")
    try:
        resolved = scope.resolve(head)
    except griffe.NameResolutionError:
        return name
    return f"{resolved}.{rest}" if rest else resolved


def _link(scope: griffe.Object, match: re.Match[str]) -> str:
    short, name = match.group(1) == "~", match.group(2)
    title = name.rsplit(".", 1)[-1] if short else name
    return (
        f'<autoref optional identifier="{html.escape(_target(scope, name))}">'
        f"<code>{html.escape(title)}</code></autoref>"
    )


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of a loaded package once all its objects are known."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                scope = obj if obj.is_class or obj.is_module else obj.parent or obj
                obj.docstring.value = ROLE.sub(lambda m, scope=scope: _link(scope, m), obj.docstring.value)
