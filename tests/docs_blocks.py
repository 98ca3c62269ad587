"""The fenced code blocks of the Markdown docs, with the HTML comments that label them.

A label is an HTML comment on the line(s) right above a block's opening fence, one per line,
`<!-- KEY: VALUE -->`: GitHub renders nothing for it. tests/test_docs_commands.py reads the
`docs-test` label of every shell and Python block (what it does with the block), and
tests/test_local_tls.py finds its recipe by its `local-tls` labels.

    <!-- docs-test: run-against-stack -->
    ```sh
    .venv/bin/voxline voices
    ```

A block may sit inside a list item (indented): its text comes back without that indentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The documents whose commands are tested: the README and every page under docs/.
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_LABEL = re.compile(r"^\s*<!--\s*(?P<key>[\w-]+):\s*(?P<value>.*?)\s*-->\s*$")
_INLINE_CODE = re.compile(r"(?<!`)`([^`]+?)`(?!`)")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    path: Path
    line: int  #: 1-based line of the opening fence
    lang: str  #: the info string's first word ("" for none)
    text: str  #: the content, without the block's own indentation
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of `path`, in order, with its labels."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        labels: dict[str, str] = {}
        above = i - 1
        while above >= 0 and (label := _LABEL.match(lines[above])):
            labels.setdefault(label["key"], label["value"])
            above -= 1
        info = opening["info"].strip()
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=info.split()[0] if info else "",
                text="\n".join(body) + ("\n" if body else ""),
                labels=labels,
            )
        )
        i = end + 1
    return found


def labelled(path: Path, key: str, value: str) -> Block:
    """The one block of `path` labelled `<!-- KEY: VALUE -->`."""
    matches = [b for b in blocks(path) if b.labels.get(key) == value]
    assert len(matches) == 1, f"{len(matches)} blocks labelled '{key}: {value}' in {path}"
    return matches[0]


def prose(path: Path) -> str:
    """The text of `path` with its fenced code blocks blanked out (lines kept, empty)."""
    lines = path.read_text().splitlines()
    inside: set[int] = set()
    for block in blocks(path):
        count = block.text.count("\n")
        inside.update(range(block.line - 1, block.line + count + 1))
    return "\n".join("" if n in inside else line for n, line in enumerate(lines))


def inline_code(path: Path) -> list[str]:
    """Every `inline code` span of `path`'s prose; a span broken over lines comes back on
    one (Markdown reads the line break as a space)."""
    spans = _INLINE_CODE.findall(prose(path))
    return [" ".join(span.split()) for span in spans if "\n\n" not in span]
