"""The dashboard in a real browser: perf/dashboard.py builds the page from the committed results in
perf/results/ and a made-up GPU history, and headless Chromium (Debian's, driven by Playwright)
checks that it renders without errors or requests, shows every workload, and that every number it
shows is the one in the JSON rows (ratios recomputed here from the rows' times)."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "perf" / "results"
CHROMIUM = os.environ.get("TRITONFUNC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a root user on a machine without network (see .ci/run): no sandbox, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def _gpu_rows(workloads: list[str]) -> list[dict]:
    """Two GPU runs over the given workloads, with every kind of cell: times, ratios, fails, wrong."""
    rows = []
    for i, commit in enumerate(["0123456789ab", "ba9876543210"]):
        run = f"2000010{i + 1}T000000Z-{commit}-cuda"
        for j, workload in enumerate(workloads):
            size = f"n={1 << (10 + j)}"

            def add(provider, metric, value, note=None, run=run, workload=workload, size=size, commit=commit):
                row = {"run": run, "workload": workload, "provider": provider, "size": size, "dtype": "float32"}
                row |= {"device": "NVIDIA H100 80GB HBM3", "backend": "triton", "commit": commit, "dirty": False}
                row |= {"versions": {"torch": "2.11.0", "triton": "3.6.0"}, "metric": metric, "value": value}
                rows.append(row | ({"note": note} if note else {}))

            tf = 0.25 + 0.01 * j + 0.1 * i
            add("tritonfunc", "status", "ok")
            add("tritonfunc", "ms", tf)
            add("tritonfunc", "launches", 1 + j % 3)
            add("tritonfunc", "bytes_over_ideal", 1.0 + 0.5 * (j % 2))
            add("torch.func", "ms", tf * (2 + j))
            add("roofline", "ms", tf * 0.9, "memory" if j % 2 else "compute")
            if j % 4 == 1:
                add("torch.compile", "status", "fails", "BackendCompilerFailed: made up")
            elif j % 4 == 2:
                add("torch.compile", "status", "wrong", "max abs error 1 over tolerance")
            else:
                add("torch.compile", "status", "ok")
                add("torch.compile", "ms", tf * 1.3)
    return rows


@pytest.fixture(scope="module")
def page_and_rows(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's 'chromium' package (.ci/run does, as root)")
    results = tmp_path_factory.mktemp("results")
    for path in RESULTS.glob("*.jsonl"):
        shutil.copy(path, results)
    committed = [json.loads(line) for p in results.glob("*.jsonl") for line in p.read_text().splitlines()]
    names = sorted({r["workload"] for r in committed if r["workload"] != "machine"}) or ["grad_elementwise"]
    (results / "gpu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _gpu_rows(names)))
    rows = [json.loads(line) for p in results.glob("*.jsonl") for line in p.read_text().splitlines()]

    html = results / "dashboard.html"
    cmd = [sys.executable, str(ROOT / "perf" / "dashboard.py"), "--out", str(html), "--results", str(results)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems, requests = [], []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(results / "dashboard.png"))
        yield page, rows, problems, requests, html
        browser.close()


def test_page_renders_without_errors_or_requests(page_and_rows):
    page, _, problems, requests, html = page_and_rows
    assert page.title() == "tritonfunc perf dashboard"
    assert not problems, problems
    assert requests == [html.as_uri()], f"the page fetched more than itself: {requests}"
    assert page.locator("svg").count() > 0, "no plots"


def test_every_workload_in_the_results_is_shown(page_and_rows):
    page, rows, *_ = page_and_rows
    workloads = {r["workload"] for r in rows} - {"machine"}
    for name in workloads:
        section = page.locator(f"section#w-{name}")
        assert section.count() == 1 and section.is_visible(), name
        assert section.locator("h2").inner_text() == name


def _shown_number(text: str, metric: str) -> tuple[float, float]:
    """The number a cell shows and half a unit of its last digit (its rounding)."""
    match = re.fullmatch(r"(-?[\d.]+)\s*(x|%| MB| GFLOP)?", text.strip())
    assert match, f"{metric}: cannot read {text!r}"
    digits = match.group(1)
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    scale = {"%": 1e-2, " MB": 1e6, " GFLOP": 1e9}.get(match.group(2), 1.0)
    return float(digits) * scale, 0.5 * 10**-decimals * scale * (1 + 1e-9)


def test_numbers_shown_match_the_json(page_and_rows):
    page, rows, *_ = page_and_rows
    index = {(r["run"], r["workload"], r["size"], r["provider"], r["metric"]): r["value"] for r in rows}
    cells = page.eval_on_selector_all("td[data-metric]", "tds => tds.map(td => ({text: td.innerText, ...td.dataset}))")
    checked = {"raw": 0, "ratio": 0, "status": 0}
    for c in cells:
        key = (c["run"], c["workload"], c["size"], c["provider"])
        if c["metric"].startswith("ratio:") or c["metric"] == "roofline_share":
            against = "roofline" if c["metric"] == "roofline_share" else c["metric"].split(":", 1)[1]
            expected = index[(c["run"], c["workload"], c["size"], against, "ms")] / index[(*key, "ms")]
            checked["ratio"] += 1
        else:
            expected = index[(*key, c["metric"])]
            if isinstance(expected, str):
                assert c["text"] == expected, c
                checked["status"] += 1
                continue
            checked["raw"] += 1
        shown, half_unit = _shown_number(c["text"], c["metric"])
        assert math.isclose(float(c["value"]), expected, rel_tol=1e-12), c
        assert abs(shown - expected) <= half_unit, (c, expected)
    assert checked["ratio"] and checked["raw"] and checked["status"], checked


def test_latest_gpu_run_is_the_one_shown(page_and_rows):
    page, rows, *_ = page_and_rows
    latest = max(r["run"] for r in rows if r["backend"] == "triton")
    shown = set(page.eval_on_selector_all("table.gpu td[data-run]", "tds => tds.map(td => td.dataset.run)"))
    assert shown == {latest}
    fails = page.locator("table.gpu td.status-fails")
    assert fails.count() > 0 and fails.first.get_attribute("title") == "BackendCompilerFailed: made up"
