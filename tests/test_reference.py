"""The reference pages (docs/settings.md, docs/metrics.md, docs/errors.md) are what the code
generates now, so they cannot go stale: change a setting, a metric or an error type and this
fails until ``python -m tools.reference`` is rerun."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from prometheus_client.metrics import MetricWrapperBase

from service.inference import metrics
from service.platform import errors
from service.platform.settings import Settings
from tools import reference
from tools.reference import DOCS, PAGES, ROOT, docstring_entries, stale_pages


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_page_is_what_the_code_generates(page):
    path = DOCS / page
    assert path.exists(), f"docs/{page} is missing: run `python -m tools.reference`"
    assert path.read_text() == PAGES[page](), (
        f"docs/{page} differs from the code: run `python -m tools.reference` and commit the page"
    )


def _variables(model, prefix="MODELSERVE_"):
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            yield from _variables(annotation, f"{prefix}{name.upper()}__")
        else:
            yield f"{prefix}{name.upper()}", info


def test_every_setting_is_described_and_listed_with_its_default():
    page = (DOCS / "settings.md").read_text()
    for variable, info in _variables(Settings):
        assert info.description, f"{variable} has no Field(description=...) in settings.py"
        row = next((line for line in page.splitlines() if line.startswith(f"| `{variable}` |")), None)
        assert row is not None, f"{variable} is not in docs/settings.md"


def test_every_registered_metric_is_listed_under_its_exposed_names():
    page = (DOCS / "metrics.md").read_text()
    found = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(found) >= 10
    for metric in found:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(metric._type, [""])
        for suffix in suffixes:
            assert f"`{metric._name}{suffix}`" in page
        assert metric._documentation.split(",")[0] in page


def test_every_error_type_has_its_status_when_example_and_advice():
    page = (DOCS / "errors.md").read_text()
    types = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ApiError) and cls is not errors.ApiError
    ]
    for cls in types:
        entries = docstring_entries(cls)
        assert entries, f"{cls.__name__}'s docstring has no When/Example/Client sections"
        assert f"\n## {cls.status} " in page, f"{cls.status} ({cls.__name__}) is not in docs/errors.md"
        for entry in entries:
            assert "When" in entry and "Client" in entry, cls.__name__
            if "Example" in entry:
                body = json.loads(entry["Example"])
                assert isinstance(body["error"], str) and "request_id" in body, cls.__name__
    # Every example on the page is a JSON body of the one error shape.
    for block in re.findall(r"```json\n(.*?)\n```", page, re.S)[1:]:
        body = json.loads(block)
        assert set(body) <= {"error", "detail", "request_id"} and "error" in body and "request_id" in body


def test_check_names_a_stale_page_and_exits_1(tmp_path):
    for name, make in PAGES.items():
        (tmp_path / name).write_text(make())
    assert stale_pages(tmp_path) == []
    (tmp_path / "metrics.md").write_text((tmp_path / "metrics.md").read_text() + "\nedited by hand\n")
    (tmp_path / "errors.md").unlink()
    assert stale_pages(tmp_path) == ["metrics.md", "errors.md"]


def test_the_command_checks_the_committed_pages():
    done = subprocess.run(
        [sys.executable, "-m", "tools.reference", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert reference.COMMAND == "python -m tools.reference"
