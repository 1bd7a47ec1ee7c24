"""Every Python code block in the README and docs/ runs (docs that lie are bugs)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks():
    for page in PAGES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            yield pytest.param(code, id=f"{page.name}-{i}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_code_block_runs(code):
    # Blocks on one page may build on each other only through explicit imports.
    exec(compile("import torch\n" + code, "<doc>", "exec"), {})


# What may not appear in a tracked file: the project is self-contained. The strings are
# assembled so that this file does not match itself.
OUTSIDE = ("shared" + "/", "REFERENCE" + ".md")
RELATIVE_PATH = re.compile(r"(?<![\w.])((?:\.\./)+)([\w.-][\w./-]*)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
PROTOCOLS_ANCHOR = re.compile(r"docs/protocols\.md#([\w-]+)")


def _tracked_text_files():
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    for name in listed.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file():
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # images and other binary files


def _anchors(page):
    """GitHub's heading anchors of a Markdown page."""
    from neuralode.experiments.report_html import slug

    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*?)\s*$", text, re.M)}


def test_no_tracked_file_refers_outside_the_repository():
    found = []
    for path, text in _tracked_text_files():
        rel = path.relative_to(ROOT)
        for n, line in enumerate(text.splitlines(), 1):
            found += [f"{rel}:{n}: {word}" for word in OUTSIDE if word in line]
            for up, rest in RELATIVE_PATH.findall(line):
                target = (path.parent / up / rest).resolve()
                if not target.is_relative_to(ROOT):
                    found.append(f"{rel}:{n}: {up}{rest} leaves the repository")
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_every_docs_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for groups in LINK.findall(text):
            target = groups[0] or groups[1]
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_pointer_to_the_protocols_page_names_a_section():
    anchors = _anchors(ROOT / "docs" / "protocols.md")
    bad = [
        f"{path.relative_to(ROOT)}: #{anchor}"
        for path, text in _tracked_text_files()
        for anchor in PROTOCOLS_ANCHOR.findall(text)
        if anchor not in anchors
    ]
    assert not bad, "docs/protocols.md has no such section:\n" + "\n".join(bad)
