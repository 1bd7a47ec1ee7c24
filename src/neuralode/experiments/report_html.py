"""REPORT.html: the Markdown report as one self-contained page (figures embedded).

A converter for the subset of Markdown that REPORT.md uses (headings, paragraphs, tables,
lists, images, links, emphasis, code spans and fenced code), so that the report needs no
extra dependency. Nothing in the page loads anything: every figure is a base64 ``data:`` URI
and the style sheet is inline, so the one file can be opened anywhere or sent on. A link to
a figure that the page embeds becomes a link to that figure in the page; a link to any
other local file is kept as text, since the path would not resolve on another machine.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
CODE = re.compile(r"(`[^`]+`)")
BOLD = re.compile(r"\*\*(.+?)\*\*")
ITALIC = re.compile(r"(?<![\w*])\*(?![\s*])(.+?)(?<![\s*])\*(?![\w*])")
HEADING = re.compile(r"(#{1,6})\s+(.*)")
BULLET = re.compile(r"[-*]\s+(.*)")
NUMBERED = re.compile(r"\d+\.\s+(.*)")
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 72em; margin: 2em auto;
       padding: 0 1em; color: #1b1b1b; background: #fff; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
code { background: #f2f2f2; padding: 0 .2em; border-radius: 3px; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 14px; }
"""


def slug(text: str) -> str:
    """A heading's anchor, as GitHub makes it: lower case, punctuation dropped, spaces → -."""
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def _is_local(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:|//|#", target, re.I)


class _Page:
    """One conversion: the report's folder and the figures the page embeds (path → anchor)."""

    def __init__(self, markdown: str, base: Path) -> None:
        self.base = base
        self.figures: dict[str, str] = {}
        for _, target in IMAGE.findall(markdown):
            if _is_local(target) and (base / target).is_file():
                self.figures.setdefault(target, f"fig-{len(self.figures) + 1}")

    def image(self, alt: str, target: str) -> str:
        anchor = self.figures.get(target)
        if anchor is None:  # missing, or not a local file: never loaded from elsewhere
            return f"<em>({alt}: figure not available)</em>"
        path = self.base / target
        mime = MIME.get(path.suffix.lower(), "application/octet-stream")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img id="{anchor}" alt="{alt}" src="data:{mime};base64,{data}">'

    def link(self, text: str, target: str) -> str:
        if target.startswith("#") or not _is_local(target):
            return f'<a href="{target}">{text}</a>'
        anchor = self.figures.get(html.unescape(target))
        if anchor is not None:
            return f'<a href="#{anchor}">{text}</a>'
        return f"{text} (<code>{target}</code>)"

    def inline(self, text: str) -> str:
        """Emphasis, links and images; code spans are kept verbatim (escaped)."""
        out = []
        for i, part in enumerate(CODE.split(text)):
            if i % 2:
                out.append(f"<code>{html.escape(part[1:-1])}</code>")
                continue
            part = html.escape(part, quote=True)
            part = IMAGE.sub(lambda m: self.image(m[1], html.unescape(m[2])), part)
            part = LINK.sub(lambda m: self.link(m[1], m[2]), part)
            part = BOLD.sub(r"<strong>\1</strong>", part)
            out.append(ITALIC.sub(r"<em>\1</em>", part))
        return "".join(out)

    def blocks(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
            elif line.startswith("```"):
                end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")),
                           len(lines))  # fmt: skip
                code = html.escape("\n".join(lines[i + 1 : end]))
                out.append(f"<pre><code>{code}</code></pre>")
                i = end + 1
            elif m := HEADING.fullmatch(line):
                level, text = len(m[1]), m[2].strip()
                out.append(f'<h{level} id="{slug(text)}">{self.inline(text)}</h{level}>')
                i += 1
            elif line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1]) <= set("|-: "):
                end = i + 2
                while end < len(lines) and lines[end].startswith("|"):
                    end += 1
                out.append(self.table(lines[i], lines[i + 2 : end]))
                i = end
            elif BULLET.fullmatch(line) or NUMBERED.fullmatch(line):
                i = self.list(lines, i, out)
            else:
                end = i
                while end < len(lines) and lines[end].strip() and not self.starts_block(lines[end]):
                    end += 1
                end = max(end, i + 1)
                out.append(self.paragraph(" ".join(s.strip() for s in lines[i:end])))
                i = end
        return out

    @staticmethod
    def starts_block(line: str) -> bool:
        return bool(line.startswith(("```", "|", "#")) or BULLET.fullmatch(line)
                    or NUMBERED.fullmatch(line))  # fmt: skip

    def paragraph(self, text: str) -> str:
        if m := IMAGE.fullmatch(text):
            return (
                f"<figure>{self.inline(text)}<figcaption>{html.escape(m[1])}</figcaption></figure>"
            )
        return f"<p>{self.inline(text)}</p>"

    def table(self, header: str, rows: list[str]) -> str:
        def cells(row: str) -> list[str]:
            return [c.strip() for c in row.strip().strip("|").split("|")]

        head = "".join(f"<th>{self.inline(c)}</th>" for c in cells(header))
        if not any(cells(header)):  # a key-value table: no empty header row
            head = ""
        body = "".join(
            "<tr>" + "".join(f"<td>{self.inline(c)}</td>" for c in cells(r)) + "</tr>" for r in rows
        )
        thead = f"<thead><tr>{head}</tr></thead>" if head else ""
        return f"<table>{thead}<tbody>{body}</tbody></table>"

    def list(self, lines: list[str], i: int, out: list[str]) -> int:
        tag = "ol" if NUMBERED.fullmatch(lines[i]) else "ul"
        items: list[str] = []
        while i < len(lines) and lines[i].strip():
            m = BULLET.fullmatch(lines[i]) or NUMBERED.fullmatch(lines[i])
            if m:
                items.append(m[1])
            elif lines[i].startswith(" ") and items:  # a wrapped item continues
                items[-1] += " " + lines[i].strip()
            else:
                break
            i += 1
        out.append(f"<{tag}>" + "".join(f"<li>{self.inline(t)}</li>" for t in items) + f"</{tag}>")
        return i


def to_html(markdown: str, base: Path, title: str = "neuralode report") -> str:
    """The whole page: ``markdown`` converted, images under ``base`` embedded."""
    page = _Page(markdown, base)
    body = "\n".join(page.blocks(markdown.splitlines()))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
