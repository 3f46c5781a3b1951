"""report.html: one self-contained file, readable offline, made from the same text as report.md.

The body is report.md (lab.report.markdown) turned into HTML, so the tables, conditions and observations
are never computed twice: the markdown tables become HTML tables through tabulate, and every image
the markdown links (the plots) is embedded as a base64 data URI. The manifest and the summary follow
in collapsible <details>. No script, no external resource: inline CSS only.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from tabulate import tabulate

from lab import run_folder as rf
from lab.report.run_view import RunView

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #457b9d; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8rem 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; white-space: nowrap; }
th { background: #f3f6f9; }
tr:nth-child(even) td { background: #fafbfc; }
code, pre { font: 12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, monospace; background: #f3f4f6; }
code { padding: 0 .25em; border-radius: 3px; }
pre { padding: .8rem; overflow-x: auto; max-height: 40rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5rem 0; }
details { margin: .6rem 0; } summary { cursor: pointer; font-weight: 600; }
"""


def render_html(view: RunView, markdown: str) -> str:
    """The whole report.html text: `markdown` (report.md's text) as HTML, then the manifest and the summary."""
    manifest = view.manifest
    body = markdown_to_html(markdown, view.path)
    appendix = ["<h2>Records</h2>", _details(rf.MANIFEST, manifest), _details(rf.SUMMARY, view.summary_file)]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>PagedAttention Lab run {html.escape(manifest.get('run_id', view.path.name))}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n" + "\n".join(appendix) + "\n</body>\n</html>\n"
    )


def _details(name: str, data: dict) -> str:
    text = html.escape(json.dumps(data, indent=2, default=str))
    return f"<details><summary>{html.escape(name)}</summary>\n<pre>{text}</pre>\n</details>"


# -- the markdown report.md uses: headings, bullets, github tables, paragraphs, `code`, **bold**, images


def markdown_to_html(markdown: str, run_dir: Path) -> str:
    out, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(table_to_html(block))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:], run_dir)}</li>")
                i += 1
            out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
            continue
        heading = re.match(r"(#{1,6}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2), run_dir)}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line, run_dir)}</p>")
        i += 1
    return "\n".join(out)


def table_to_html(lines: list[str]) -> str:
    """A github-style markdown table (as tabulate writes report.md's) -> an HTML table, via tabulate."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    rows = [r for r in rows if not all(re.fullmatch(r":?-+:?", c) for c in r)]  # the separator line
    return tabulate(rows[1:], headers=rows[0], tablefmt="html", disable_numparse=True)


def inline(text: str, run_dir: Path) -> str:
    """Escape, then `code`, **bold**, ![alt](file.png) as an embedded image, [text](url) as a link."""
    text = html.escape(text, quote=False)
    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", lambda m: _image(m.group(1), m.group(2), run_dir), text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _image(alt: str, name: str, run_dir: Path) -> str:
    """A plot in the run folder as a data URI; anything else is left as text (no external resource)."""
    path = run_dir / name
    if "/" in name or not name.endswith(".png") or not path.is_file():
        return f"[image not embedded: {name}]"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{alt.replace(chr(34), "&quot;")}" src="data:image/png;base64,{data}">'
