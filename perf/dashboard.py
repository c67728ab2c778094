"""Builds one self-contained static page from the perf suite's results.

    python perf/dashboard.py --out dashboard.html [--results perf/results]

Reads every *.jsonl under the results folder (rows written by perf/suite.py) and writes one HTML
file with inline CSS and inline SVG plots (matplotlib): nothing is fetched when it is opened.
Per workload: the latest GPU run's times and ratios (against torch.func, torch.compile and the
roofline), the latest CPU run's proxies (launches, bytes against the ideal, host time; the plan at
GPU sizes), and the history over commits. Every number shown carries the row it came from in
data-* attributes, so tests/test_dashboard.py can check it against the JSON in a browser.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

import jinja2
import markupsafe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workloads import BY_NAME  # noqa: E402

TARGET_ROOFLINE, TARGET_COMPILE, TARGET_EAGER = 0.8, 1.0, 5.0  # as perf/suite.py reports them


def load(*folders: Path) -> list[dict]:
    rows = []
    paths = sorted({p.resolve() for folder in folders for p in Path(folder).glob("*.jsonl")})
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{n}: not JSON: {e}") from e
    return rows


# ---------------------------------------------------------------------------------------------
# Cells: a shown number and the row (or rows) it came from.


def fmt(metric: str, value) -> str:
    """How a value is shown; tests/test_dashboard.py parses these back."""
    if isinstance(value, str):
        return value
    if metric.startswith("ratio:"):
        return f"{value:.2f}x"
    if metric == "roofline_share":
        return f"{100 * value:.0f}%"
    if metric.endswith("launches") or metric.endswith("aten_ops"):
        return f"{value:d}"
    if metric.endswith("bytes_over_ideal"):
        return f"{value:.2f}"
    if metric.endswith("ideal_bytes") or metric.endswith("plan_bytes") or metric == "bytes":
        return f"{value / 1e6:.3f} MB"
    if metric == "flops":
        return f"{value / 1e9:.3f} GFLOP"
    if metric in ("ms", "host_ms", "interp_ms"):
        return f"{value:.4f}"
    if metric in ("host_us",):
        return f"{value:.1f}"
    if metric.endswith("_s"):
        return f"{value:.2f}"
    return f"{value:.4g}"


class Run:
    """One run of the suite: its rows indexed by (workload, size, provider, metric)."""

    def __init__(self, run_id: str, rows: list[dict]):
        self.id = run_id
        self.rows = rows
        first = rows[0]
        self.commit, self.device, self.backend = first["commit"], first["device"], first.get("backend", "")
        self.dirty = any(r.get("dirty") for r in rows)
        self.versions = first.get("versions", {})
        self.gpu = self.backend == "triton"
        self.index = {(r["workload"], r["size"], r["provider"], r["metric"]): r for r in rows}
        self.workloads = list(dict.fromkeys(r["workload"] for r in rows))

    def sizes(self, workload: str, plan: bool | None = None) -> list[str]:
        keep = lambda m: plan is None or m.startswith("plan_") == plan
        return list(dict.fromkeys(r["size"] for r in self.rows if r["workload"] == workload and keep(r["metric"])))

    def cell(self, workload: str, size: str, provider: str, metric: str) -> dict:
        row = self.index.get((workload, size, provider, metric))
        if row is None:
            return {"text": "-", "attrs": {}}
        attrs = {"workload": workload, "size": size, "provider": provider, "metric": metric, "run": self.id}
        if not isinstance(row["value"], str):
            attrs["value"] = repr(row["value"])
        cls = "status-" + row["value"] if metric.endswith("status") else ""
        return {"text": fmt(metric, row["value"]), "attrs": attrs, "title": row.get("note", ""), "cls": cls}

    def value(self, workload, size, provider, metric):
        row = self.index.get((workload, size, provider, metric))
        return None if row is None else row["value"]

    def ratio(self, workload: str, size: str, against: str) -> dict:
        """tritonfunc's speed-up over `against` (its ms over tritonfunc's), or its share of the roofline."""
        tf = self.value(workload, size, "tritonfunc", "ms")
        other = self.value(workload, size, against, "ms")
        if not isinstance(tf, float | int) or not isinstance(other, float | int) or tf <= 0:
            return {"text": "-", "attrs": {}}
        metric = "roofline_share" if against == "roofline" else f"ratio:{against}"
        value = other / tf
        target = {"roofline": TARGET_ROOFLINE, "torch.compile": TARGET_COMPILE, "torch.func": TARGET_EAGER}[against]
        applies = against != "roofline" or self.index[(workload, size, "roofline", "ms")].get("note") == "memory"
        if against == "torch.func" and workload in BY_NAME and not BY_NAME[workload].composed:
            applies = False
        cls = ("met" if value >= target else "missed") if applies else ""
        attrs = {"workload": workload, "size": size, "provider": "tritonfunc", "metric": metric, "run": self.id}
        attrs["value"] = repr(value)
        return {"text": fmt(metric, value), "attrs": attrs, "cls": cls, "title": ""}


# ---------------------------------------------------------------------------------------------
# History plots (matplotlib, as inline SVG).


def history_svg(panels: list[tuple[str, str, dict[str, list[tuple[int, float]]], list[str]]]) -> str:
    """One figure, a panel per (title, y label, series by size, x labels), as inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 2.4), squeeze=False)
    for ax, (title, ylabel, series, labels) in zip(axes[0], panels):
        for name, points in series.items():
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline in HTML


HISTORIES = [
    (False, "plan_bytes_over_ideal", "CPU plan: tritonfunc bytes / ideal at GPU sizes", "bytes / ideal"),
    (True, "roofline_share", "GPU: tritonfunc's share of the roofline", "roofline / time"),
    (True, "ratio:torch.func", "GPU: speed-up over torch.func eager", "x"),
]


def histories(workload: str, runs: list[Run]) -> list[str]:
    """The workload's history over runs (in time order), one panel per metric that has data."""
    panels = []
    for gpu, metric, title, ylabel in HISTORIES:
        needs = "ms" if metric.startswith(("roofline", "ratio")) else metric
        chosen = [r for r in runs if r.gpu == gpu and any(k[0] == workload and k[3] == needs for k in r.index)]
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for i, run in enumerate(chosen):
            for size in run.sizes(workload):
                if metric.startswith(("roofline", "ratio")):
                    against = "roofline" if metric == "roofline_share" else "torch.func"
                    cell = run.ratio(workload, size, against)
                    v = float(cell["attrs"]["value"]) if "value" in cell["attrs"] else None
                else:
                    v = run.value(workload, size, "tritonfunc", metric)
                if isinstance(v, float | int):
                    series[size].append((i, v))
        if series:
            labels = [f"{r.commit[:7]}{'+' if r.dirty else ''}" for r in chosen]
            panels.append((title, ylabel, dict(series), labels))
    return [history_svg(panels)] if panels else []


# ---------------------------------------------------------------------------------------------
# The page.

CPU_COLUMNS = [
    ("tritonfunc", "tritonfunc", "status"),
    ("launches", "tritonfunc", "launches"),
    ("bytes / ideal", "tritonfunc", "bytes_over_ideal"),
    ("host ms", "tritonfunc", "host_ms"),
    ("torch.func ATen ops", "torch.func", "aten_ops"),
    ("torch.func bytes / ideal", "torch.func", "bytes_over_ideal"),
    ("torch.func host ms", "torch.func", "host_ms"),
    ("torch.compile", "torch.compile", "status"),
]
PLAN_COLUMNS = [
    ("tritonfunc plan", "tritonfunc", "plan_status"),
    ("launches", "tritonfunc", "plan_launches"),
    ("bytes / ideal", "tritonfunc", "plan_bytes_over_ideal"),
    ("torch.func ATen ops", "torch.func", "plan_aten_ops"),
    ("torch.func bytes / ideal", "torch.func", "plan_bytes_over_ideal"),
    ("ideal bytes", "roofline", "ideal_bytes"),
    ("contraction flops", "roofline", "flops"),
]
GPU_COLUMNS = [
    ("tritonfunc", "tritonfunc", "status"),
    ("tritonfunc ms", "tritonfunc", "ms"),
    ("torch.func ms", "torch.func", "ms"),
    ("torch.compile ms", "torch.compile", "ms"),
    ("roofline ms", "roofline", "ms"),
    ("launches", "tritonfunc", "launches"),
    ("bytes / ideal", "tritonfunc", "bytes_over_ideal"),
    ("cold s", "tritonfunc", "cold_s"),
    ("torch.compile", "torch.compile", "status"),
    ("compile cold s", "torch.compile", "cold_s"),
    ("host us", "tritonfunc", "host_us"),
    ("torch.func host us", "torch.func", "host_us"),
]
RATIOS = [("vs torch.func", "torch.func"), ("vs torch.compile", "torch.compile"), ("of roofline", "roofline")]


def _cell_html(c: dict) -> str:
    attrs = "".join(f' data-{k}="{markupsafe.escape(v)}"' for k, v in c["attrs"].items())
    cls = f' class="{c["cls"]}"' if c.get("cls") else ""
    title = f' title="{markupsafe.escape(c["title"])}"' if c.get("title") else ""
    return markupsafe.Markup(f"<td{cls}{title}{attrs}>{markupsafe.escape(c['text'])}</td>")


def _table(kind: str, title: str, first: str, headers: list[str], lines: list[dict]) -> dict:
    """A table, without the columns that have nothing to show for this workload."""
    keep = [i for i in range(len(headers)) if any(line["cells"][i]["text"] != "-" for line in lines)]
    return {
        "kind": kind,
        "title": title,
        "first": first,
        "headers": [headers[i] for i in keep],
        "lines": [{"size": line["size"], "cells": [line["cells"][i] for i in keep]} for line in lines],
    }


def build(rows: list[dict]) -> str:
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_run[r["run"]].append(r)
    runs = [Run(k, v) for k, v in sorted(by_run.items())]  # run ids start with a UTC time stamp
    names = list(dict.fromkeys(r["workload"] for r in rows if r["workload"] != "machine"))
    order = {n: i for i, n in enumerate(BY_NAME)}
    names.sort(key=lambda n: (order.get(n, len(order)), n))

    workloads = []
    for name in names:
        latest = lambda gpu, metric_ok: next(  # noqa: E731
            (r for r in reversed(runs) if r.gpu == gpu and any(w == name and metric_ok(m) for w, _, _, m in r.index)),
            None,
        )
        gpu_run = latest(True, lambda m: True)
        cpu_run = latest(False, lambda m: not m.startswith("plan_"))
        plan_run = latest(False, lambda m: m.startswith("plan_"))
        entry = {"name": name, "doc": BY_NAME[name].doc if name in BY_NAME else "", "tables": []}
        if gpu_run:
            lines = []
            for size in gpu_run.sizes(name):
                cells = [gpu_run.cell(name, size, p, m) for _, p, m in GPU_COLUMNS[:5]]
                cells += [gpu_run.ratio(name, size, against) for _, against in RATIOS]
                cells += [gpu_run.cell(name, size, p, m) for _, p, m in GPU_COLUMNS[5:]]
                lines.append({"size": size, "cells": cells})
            headers = [h for h, *_ in GPU_COLUMNS[:5]] + [h for h, _ in RATIOS] + [h for h, *_ in GPU_COLUMNS[5:]]
            title = f"GPU: {gpu_run.device}, commit {gpu_run.commit} ({gpu_run.id})"
            entry["tables"].append(_table("gpu", title, "size", headers, lines))
        if cpu_run:
            lines = [
                {"size": s, "cells": [cpu_run.cell(name, s, p, m) for _, p, m in CPU_COLUMNS]}
                for s in cpu_run.sizes(name, plan=False)
                if any((name, s, p, m) in cpu_run.index for _, p, m in CPU_COLUMNS)
            ]
            title = f"CPU: {cpu_run.device} ({cpu_run.backend}), commit {cpu_run.commit} ({cpu_run.id})"
            entry["tables"].append(_table("cpu", title, "size", [h for h, *_ in CPU_COLUMNS], lines))
        if plan_run:
            lines = [
                {"size": s, "cells": [plan_run.cell(name, s, p, m) for _, p, m in PLAN_COLUMNS]}
                for s in plan_run.sizes(name, plan=True)
            ]
            title = f"CPU plan at GPU sizes (nothing run), commit {plan_run.commit} ({plan_run.id})"
            entry["tables"].append(_table("plan", title, "GPU size", [h for h, *_ in PLAN_COLUMNS], lines))
        entry["plots"] = histories(name, runs)
        workloads.append(entry)

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE), autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True
    )
    return env.get_template("dashboard.html.j2").render(
        workloads=workloads,
        runs=runs,
        rows_count=len(rows),
        gpu_runs=sum(r.gpu for r in runs),
        cpu_runs=sum(not r.gpu for r in runs),
        cell=_cell_html,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument(
        "--results", action="append", help="a folder of *.jsonl; may be repeated (default perf/results)"
    )
    opts = parser.parse_args(argv)
    opts.results = opts.results or [str(HERE / "results")]
    rows = load(*map(Path, opts.results))
    if not rows:
        raise SystemExit(f"no results under {opts.results}: run perf/suite.py first")
    Path(opts.out).write_text(build(rows))
    print(f"wrote {opts.out}: {len({r['workload'] for r in rows})} workloads, {len({r['run'] for r in rows})} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
