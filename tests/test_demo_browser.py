"""`tolclip demo` in a real browser: headless Chromium uploads a photo to the running local server and reads
the names the page shows (`make test-browser`; Debian's chromium and playwright's Python package).

The page's answers are checked against the taxa file and the Python API on the same model; the page must
load nothing from outside this machine. A screenshot is left in logs/test-artifacts/demo.png.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tolclip.core.taxonomy import RANKS

from helpers import REPO, SHARED_DATA, free_port, small_release

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PHOTO = (
    SHARED_DATA / "sources" / "mushrooms" / "images" / "test" / "amanita_muscaria" / "amanita_muscaria_10.jpg"
)
SCREENSHOT = REPO / "logs" / "test-artifacts" / "demo.png"
START_TIMEOUT_S = 120
ANSWER_TIMEOUT_MS = 60_000
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TAXA_CSV = """kingdom,phylum,class,order,family,genus,species,common_name
Fungi,Basidiomycota,Agaricomycetes,Agaricales,Amanitaceae,Amanita,muscaria,fly agaric
Fungi,Basidiomycota,Agaricomycetes,Agaricales,Amanitaceae,Amanita,phalloides,death cap
Fungi,Basidiomycota,Agaricomycetes,Boletales,Boletaceae,Boletus,edulis,penny bun
Fungi,Basidiomycota,Agaricomycetes,Boletales,Boletaceae,Boletus,erythropus,
Fungi,Basidiomycota,Agaricomycetes,Agaricales,Pleurotaceae,Pleurotus,ostreatus,oyster mushroom
Plantae,Tracheophyta,Magnoliopsida,Rosales,Rosaceae,Rosa,canina,dog rose
"""
CUSTOM_LABELS = ["Amanita muscaria", "Boletus edulis", "a rock"]


def _requirements() -> str | None:
    """Why this machine cannot run the browser test, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    for module in ("playwright.sync_api", "gradio"):
        try:
            __import__(module)
        except ImportError as exn:
            return f"cannot import {module} ({exn}): pip install -e '.[test]'"
    if not PHOTO.is_file():
        return f"{PHOTO} is absent (../shared/data)"
    return None


def _wait_for_server(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Until the page answers; fail with the server's output if it dies or takes over START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tolclip demo exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"tolclip demo did not serve {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running `tolclip demo` on a small random model and six mushroom/plant species."""
    missing = _requirements()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("demo")
    model = small_release(root / "model")
    taxa = root / "taxa.csv"
    taxa.write_text(TAXA_CSV)
    port, log = free_port(), root / "server.log"
    command = [sys.executable, "-m", "tolclip", "demo", "--model", str(model), "--taxa", str(taxa)]
    command += ["--cache-dir", str(root / "cache"), "--port", str(port), "--device", "cpu", "--k", "5"]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio")}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for_server(proc, url, log)
        yield {"url": url, "model": model, "taxa": taxa, "root": root, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def browser(demo: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _open(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A fresh page on the demo, and the list it fills with every request that leaves localhost."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(ANSWER_TIMEOUT_MS)
    outside: list[str] = []
    local = re.compile(r"^(https?://127\.0\.0\.1[:/]|data:|blob:)")
    page.on("request", lambda request: None if local.match(request.url) else outside.append(request.url))
    page.goto(url, wait_until="networkidle")
    return page, outside


def _upload(page: Any, photo: Path) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    page.locator("#photo img").first.wait_for(state="visible")  # uploaded before Identify sends it


def _shown(page: Any, elem_id: str) -> list[tuple[str, float]]:
    """A result box's (name, probability) rows as the page draws them, once it has an answer."""
    box = page.locator(f"#{elem_id}")
    box.locator("[data-testid=label-output-value]").wait_for(state="visible")
    meters = box.locator("meter")
    return [
        (
            meters.nth(i).get_attribute("aria-label") or "",
            float(meters.nth(i).get_attribute("value") or "nan"),
        )
        for i in range(meters.count())
    ]


def _taxa_names(taxa: Path) -> dict[str, set[str]]:
    """Per rank, the names the page may show for these taxa (a species as 'Genus species (common)')."""
    with taxa.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = {rank: {row[rank] for row in rows} for rank in RANKS[:-1]}
    names["species"] = {_species(row["genus"], row["species"], row["common_name"]) for row in rows}
    return names


def _species(genus: str, epithet: str, common: str) -> str:
    return f"{genus} {epithet}" + (f" ({common})" if common else "")


def test_demo_page_names_a_photo_at_every_rank(demo: dict[str, Any], browser: Any) -> None:
    page, outside = _open(browser, demo["url"])
    try:
        _upload(page, PHOTO)
        page.locator("#custom-labels textarea").fill(", ".join(CUSTOM_LABELS))
        page.locator("#identify").click()
        shown = {rank: _shown(page, f"rank-{rank}") for rank in RANKS}
        custom = _shown(page, "custom-result")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        print(f"screenshot: {SCREENSHOT}")
        headings = page.locator("[data-testid=block-label]").all_inner_texts()
    finally:
        page.close()

    allowed = _taxa_names(demo["taxa"])
    for rank, rows in shown.items():
        names = [name for name, _ in rows]
        assert names, f"no {rank} names on the page"
        assert set(names) <= allowed[rank], f"{rank}: {names} not all from the taxa file"
        assert len(names) == min(5, len(allowed[rank])), f"{rank}: top-5 expected, page shows {names}"
        probs = [p for _, p in rows]
        assert probs == sorted(probs, reverse=True), f"{rank}: not best first: {rows}"
    assert {"Genus", "Species", "Kingdom"} <= {h.strip() for h in headings}
    assert {name for name, _ in custom} == set(CUSTOM_LABELS)
    assert sum(p for _, p in custom) == pytest.approx(1.0, abs=1e-3)
    assert not outside, f"the page reached outside this machine: {outside}"

    # The page's answer is the Python API's on the same model, taxa and photo.
    from tolclip.prediction.classify import TreeOfLifeClassifier

    clf = TreeOfLifeClassifier(
        demo["model"], taxa=demo["taxa"], cache_dir=demo["root"] / "api-cache", device="cpu"
    )
    [top] = clf.predict(str(PHOTO), rank="species", k=1)
    assert shown["species"][0][0] == _species(top["genus"], top["species_epithet"], top["common_name"])
    assert shown["species"][0][1] == pytest.approx(top["score"], abs=1e-4)


def test_demo_page_explains_what_is_missing(demo: dict[str, Any], browser: Any) -> None:
    answered = demo["log"].read_text().count("answered in")
    page, _ = _open(browser, demo["url"])
    try:
        page.locator("#identify").click()
        page.get_by_text("Upload a photo first.").first.wait_for(state="visible")
        # One custom label is not a choice: a warning, and the ranks are answered all the same.
        _upload(page, PHOTO)
        page.locator("#custom-labels textarea").fill("Amanita muscaria")
        page.locator("#identify").click()
        page.get_by_text("at least two labels").first.wait_for(state="visible")
        species = _shown(page, "rank-species")
    finally:
        page.close()
    assert species and species[0][0] in _taxa_names(demo["taxa"])["species"]
    # The click without a photo never reached the model; the one with a photo did.
    assert demo["log"].read_text().count("answered in") == answered + 1
