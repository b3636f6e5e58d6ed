"""The README's examples run, and print what the README says they print.

Every fenced block whose info string is ``bash runnable`` or ``python runnable`` is run against a
real server on the committed models (the shared ``server`` fixture), from the repository's root,
with ``127.0.0.1:3000`` replaced by the server's address. The ``output`` block right under it is
what it must print, line for line; ``...`` in a line matches anything (as in doctest). So an
answer whose shape, labels, shapes or seeded images change fails here until the README shows it.

Also here, because they keep the README a usable front page: its length, a docs index that links
every page under docs/, and relative links that lead somewhere, in the README and every page.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.server import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 150
ADDRESS = "127.0.0.1:3000"
BLOCK = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
RUNNERS = {"bash": "bash", "python": "python"}
# Pages other people are writing now, linked before they land; drop a name once its page exists.
PENDING: set[str] = set()


@dataclass
class Example:
    language: str
    code: str
    expected: str | None
    line: int

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def runnable_examples(text: str) -> list[Example]:
    """The runnable blocks of ``text``, each with the ``output`` block that follows it, if any."""
    blocks = list(BLOCK.finditer(text))
    examples = []
    for i, block in enumerate(blocks):
        info = block.group(1).split()
        if len(info) != 2 or info[1] != "runnable":
            continue
        expected = None
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        if (
            following is not None
            and following.group(1).strip() == "output"
            and not text[block.end() : following.start()].strip()
        ):
            expected = following.group(2)
        line = text.count("\n", 0, block.start()) + 1
        examples.append(Example(info[0], block.group(2), expected, line))
    return examples


def matches(expected: str, actual: str) -> bool:
    """Line for line, each expected line with ``...`` standing for any text within that line."""
    want, got = expected.rstrip("\n").splitlines(), actual.rstrip("\n").splitlines()
    if len(want) != len(got):
        return False
    return all(
        re.fullmatch(".*?".join(re.escape(part) for part in w.split("...")), g.rstrip())
        for w, g in zip(want, got, strict=True)
    )


EXAMPLES = runnable_examples(README.read_text())


def test_the_readme_has_runnable_examples_of_both_kinds_each_with_its_output():
    assert {e.language for e in EXAMPLES} == set(RUNNERS), [e.name for e in EXAMPLES]
    for example in EXAMPLES:
        assert example.language in RUNNERS, f"{example.name}: runnable blocks are bash or python"
        assert example.expected is not None, f"{example.name}: no ```output block right under it"
        assert ADDRESS in example.code, f"{example.name}: examples talk to {ADDRESS}"


def test_matching_treats_an_ellipsis_as_any_text_within_one_line():
    assert matches('{"labels":[0],"p":[0.96...,...]}\n', '{"labels":[0],"p":[0.9670068,0.1]}')
    assert not matches('{"labels":[0],...}', '{"labels":[7],"p":[]}')
    assert not matches("[0]\n7", "[0]")
    assert not matches("a...b", "a\nb")


def _environment() -> dict[str, str]:
    """The caller's environment without proxies (the server is on 127.0.0.1), with the venv first."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_the_example_prints_what_the_readme_shows(example, server, tmp_path):
    if example.language == "bash" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    address = server.url.removeprefix("http://")
    code = example.code.replace(ADDRESS, address)
    if example.language == "python":
        script = tmp_path / "example.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{example.name} exited {done.returncode}:\n{done.stderr}"
    assert matches(example.expected, done.stdout), (
        f"{example.name} printed\n{done.stdout}\nbut the README shows\n{example.expected}"
    )


def test_metrics_reference_lists_every_series_the_server_exposes(server):
    """docs/metrics.md is generated from the code; this checks it against a real /metrics."""
    with server.client() as client:
        client.post("/classify", json={"images": [[[0] * 8] * 8]}).raise_for_status()
        text = client.get("/metrics").text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("modelserve_")}
    page = (DOCS / "metrics.md").read_text()
    assert names, "no modelserve_ series in /metrics"
    assert not [n for n in names if f"`{n}`" not in page], "series missing from docs/metrics.md"


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}"


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*") if p.suffix in (".md", ".txt") and p.is_file())


def test_the_readme_indexes_every_page_under_docs():
    text = README.read_text()
    index = text[text.index("## Documentation") :]
    missing = [str(p.relative_to(ROOT)) for p in _pages() if f"]({p.relative_to(ROOT)})" not in index]
    assert not missing, f"not in the README's docs index: {missing}"


def _links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # links, not code
    return [
        target.split("#")[0]
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")
    ]


@pytest.mark.parametrize(
    "page", [README, *(p for p in _pages() if p.suffix == ".md")], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_relative_link_leads_to_a_file(page):
    broken = []
    for target in _links(page):
        path = (page.parent / target).resolve()
        if path.exists() or str(path.relative_to(ROOT)) in PENDING:
            continue
        broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links missing files: {broken}"
