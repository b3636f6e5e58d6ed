"""A newest version folder without a manifest.json is named in a warning, once, and counted.

The store's listing passes over such a folder, so without this the version below it is served
with no word at all (issue: ``forecaster/2/manifest.json`` deleted). First the watcher in this
process, look by look over a copied store; then a real ``bentoml serve`` over a copied store
with ``forecaster/2/manifest.json`` removed. The repository's model_store/ is never touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time

import pytest

from store_format import latest_version
from tests.conftest import serve
from tests.test_model_lifecycle import FAST, in_process, metric_sum, sample

pytestmark = pytest.mark.slow

WARNING = "has no manifest.json"
# Longest wait for the warning to reach the server's log: polls of 1 s, a few of them.
PATIENCE_S = 40.0


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]


def test_a_folder_without_manifest_is_warned_about_a_poll_later_and_once(store_copy, caplog):
    served = latest_version(store_copy, "classifier")
    new = served + 1
    folder = store_copy / "classifier" / str(new)
    labels = {"model": "classifier", "version": str(new), "reason": "manifest"}

    async def scenario() -> None:
        registry, watcher = in_process(store_copy)
        before = sample("modelserve_model_load_failures_total", **labels)
        # A version being copied in by hand: its model first, its manifest a moment later.
        folder.mkdir()
        shutil.copy(store_copy / "classifier" / str(served) / "model.onnx", folder)
        await watcher.poll()
        assert warnings(caplog) == []  # found, not flagged yet
        manifest = json.loads((store_copy / "classifier" / str(served) / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": new}))
        await watcher.poll()
        assert warnings(caplog) == []  # finished before the next look: never flagged
        # Its manifest lost: flagged at the second look, and not again at the looks after it.
        (folder / "manifest.json").unlink()
        for _ in range(4):
            await watcher.poll()
        assert sample("modelserve_model_load_failures_total", **labels) == before + 1
        assert registry.serving_version("classifier") == served
        await watcher.wait_for_releases()
        await registry.close()

    with caplog.at_level(logging.WARNING, logger="service.inference.model_watcher"):
        asyncio.run(scenario())
    assert warnings(caplog) == [
        f"{folder} has no manifest.json, so classifier/{new} is NOT served (classifier/{served} is served "
        "instead): publish it with its manifest.json, or remove the folder"
    ]


def test_a_server_whose_newest_forecaster_lost_its_manifest_says_so(tmp_path, store_copy):
    (store_copy / "forecaster" / "2" / "manifest.json").unlink()
    with (
        serve(tmp_path, store=store_copy, models="forecaster", workers="1", **FAST) as server,
        server.client() as http,
    ):
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline and WARNING not in server.log_text():
            time.sleep(0.2)
        time.sleep(3)  # three more polls: the warning is not repeated
        log = server.log_text()
        metrics = http.get("/metrics").text
        versions = http.get("/v2/models/forecaster").json()["versions"]
    lines = [line for line in log.splitlines() if WARNING in line]
    print("\n".join(lines))
    assert len(lines) == 1 and str(store_copy / "forecaster" / "2") in lines[0], lines
    assert "forecaster/2 is NOT served (forecaster/1 is served instead)" in lines[0]
    assert (
        metric_sum(
            metrics,
            "modelserve_model_load_failures_total",
            model="forecaster",
            version="2",
            reason="manifest",
        )
        == 1
    )
    assert versions == ["1"]
