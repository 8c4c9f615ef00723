"""A griffe extension for the API pages: Sphinx cross-reference roles in the docstrings
(:class:`~flowmatch.models.MLP`, :func:`fit`, :meth:`DiscreteSolver.sample`, :mod:`...`)
become code spans that link to the object where the site documents it.

The docstrings are written for plain reading and Sphinx; mkdocstrings renders Markdown, where a
role would show as ":class:" followed by the code. Each role is resolved in the scope of the
object whose docstring holds it, and emitted as an *optional* autorefs reference: a link when
the target has an entry on the site, plain code (no warning) when it does not — a private
helper, or a module the API pages do not render.

mkdocs.yml loads this file (plugins → mkdocstrings → options → extensions); it is not a page
(``exclude_docs``).
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|obj|exc|const):`(~?)([^`<>]+)`")
SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Other Parameters|Keyword Args|"
                     r"Keyword Arguments|Attributes|Raises):\s*$")
ENTRY = re.compile(r"^\s*\*{0,2}[\w, ]+(\s*\([^)]*\))?:(\s|$)")


def _resolve(obj: griffe.Object, target: str, role: str) -> str | None:
    """The full path of ``target`` as seen from ``obj``'s docstring, or None."""
    if target.startswith("flowmatch."):
        path = target
    else:
        head, _, rest = target.partition(".")
        try:
            path = obj.resolve(head)
        except Exception:  # noqa: BLE001 - griffe raises NameResolutionError or an alias error
            return None
        path = f"{path}.{rest}" if rest else path
    # `fit` in flowmatch.training is both a module and the function it defines: a :func: role
    # means the function
    if role in ("func", "class", "meth") and "." in path:
        try:
            found = obj.modules_collection[path]
        except Exception:  # noqa: BLE001
            return path
        name = path.rsplit(".", 1)[1]
        if found.is_module and name in found.members:
            return f"{path}.{name}"
    return path


def _rewrite(obj: griffe.Object, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        role, short, target = match.group(1), match.group(2), match.group(3).strip()
        title = target.rsplit(".", 1)[-1] if short else target
        code = f"<code>{html.escape(title)}</code>"
        path = _resolve(obj, target, role)
        if path is None:
            return code
        return f'<autoref optional identifier="{html.escape(path)}">{code}</autoref>'

    lines, out = text.split("\n"), []
    section_indent = item_indent = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if SECTION.match(line):
            section_indent, item_indent = indent, None
        elif section_indent is not None and line.strip():
            if indent <= section_indent:
                section_indent = None
            elif item_indent is None:
                item_indent = indent
        # a line of an Args block that is not a `name: description` entry (free text) is kept
        # as it is, so griffe parses the block exactly as it would without this extension
        free_text = (section_indent is not None and indent == item_indent
                     and not ENTRY.match(line))
        out.append(line if free_text else ROLE.sub(replace, line))
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None and ":`" in obj.docstring.value:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
