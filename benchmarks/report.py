"""Tables and plots from a benchmark record (the ``results.json`` of one run).

``run.py`` calls this at the end of a run; run it by hand to rebuild the tables
and plots of an earlier run, e.g. for the docs:

    .venv/bin/python benchmarks/report.py bench-results/20261127-041500/results.json \
        --out docs/benchmark-run

Writes ``table.md`` (both tables as markdown, headed by the date, the machine and
the command), ``lifecycle.png`` (µs per task against N, log axes, one panel per
scenario, both implementations) and ``e2e.png`` (end-to-end bars), each only when
the record has the rows it needs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys

IMPLS = ("stock", "fastworker")
COLOURS = {"stock": "#7f7f7f", "fastworker": "#d62728", "fastworker_inline": "#ff9896"}


# --- tables ----------------------------------------------------------------------


def _table(header: list[str], lines: list[list[str]], left: int, markdown: bool) -> str:
    """Columns before ``left`` are left-aligned, the rest right-aligned."""
    cols = list(zip(header, *lines)) if lines else [(h,) for h in header]
    widths = [max(len(x) for x in col) for col in cols]

    def fmt(cells):
        padded = [
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded).rstrip()

    if markdown:
        rule = ["-" * w if i < left else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    else:
        rule = ["-" * w for w in widths]
    return "\n".join([fmt(header), fmt(rule), *(fmt(line) for line in lines)])


def isolated_table(record: dict, markdown: bool = False) -> str:
    """TaskState, lifecycle and heap rows: medians and speedup per case."""
    header = ["benchmark", "case", "n", "stock", "fastworker", "speedup"]
    lines = [
        [
            r["group"],
            r["case"],
            f"{r['n']:,}",
            f"{r['stock_median']:,.1f} {r['unit']}",
            f"{r['fastworker_median']:,.1f} {r['unit']}",
            f"{r['speedup']:,.2f}x",
        ]
        for r in record.get("rows", [])
    ]
    return _table(header, lines, 2, markdown)


def _pair(row: dict, key: str, fmt: str) -> str:
    return f"{format(row['stock_median'][key], fmt)} / {format(row['fastworker_median'][key], fmt)}"


def e2e_table(record: dict, markdown: bool = False) -> str:
    """End-to-end rows: stock / fastworker medians side by side, with ratios; and
    fastworker without the in-process executor when the run has it."""
    header = [
        "cluster", "workload", "tasks", "wall s", "speedup", "tasks/s",
        "worker CPU µs/task", "CPU ratio", "in state machine", "state machine µs/task",
        "+ event loop: speedup", "+ event loop: CPU ratio",
    ]
    lines = []
    for r in record.get("e2e", {}).get("rows", []):
        s, f = r["stock_median"], r["fastworker_median"]
        lines.append([
            r["config"],
            r["workload"],
            f"{s['tasks']:,.0f}",
            _pair(r, "wall", ".2f"),
            f"{r['wall_speedup']:.2f}x",
            _pair(r, "tasks_per_s", ",.0f"),
            _pair(r, "cpu_us_per_task", ",.0f"),
            f"{r['cpu_ratio']:.2f}x",
            f"{100 * s['sm_share']:.0f}% / {100 * f['sm_share']:.0f}%",
            _pair(r, "sm_us_per_task", ",.0f"),
            f"{r['inline_wall_speedup']:.2f}x" if "inline_wall_speedup" in r else "-",
            f"{r['inline_cpu_ratio']:.2f}x" if "inline_cpu_ratio" in r else "-",
        ])
    return _table(header, lines, 2, markdown)


#: The isolated lifecycle scenario of the same shape as each end-to-end workload
#: (the array sum is a tree reduction of chunks).
LEVEL_SCENARIOS = {
    "map no-op": "independent",
    "array sum": "tree (fan-in 8)",
    "tree (fan-in 8)": "tree (fan-in 8)",
    "transfers": "remote deps (50 peers)",
}


def _isolated_row(record: dict, scenario: str) -> dict | None:
    """The run's lifecycle row of ``scenario`` nearest 10,000 tasks (log scale)."""
    rows = [r for r in record.get("rows", []) if r["group"] == "lifecycle" and r["case"] == scenario]
    if not rows:
        return None
    return min(rows, key=lambda r: abs(math.log(r["n"] / 10_000)))


def levels_table(record: dict, markdown: bool = False) -> str:
    """Per end-to-end workload, the four levels side by side, stock / fastworker and
    the ratio: the isolated state machine (the lifecycle scenario of the same shape),
    the state machine inside the live workers, the whole worker process, tasks/s;
    and each implementation's live state machine cost over its isolated cost."""
    header = ["cluster", "workload", "isolated as", "isolated µs/task", "live SM µs/task",
              "live / isolated", "worker CPU µs/task", "tasks/s"]
    lines = []
    for r in record.get("e2e", {}).get("rows", []):
        iso = _isolated_row(record, LEVEL_SCENARIOS.get(r["workload"], ""))
        if iso is None:
            continue
        s, f = r["stock_median"], r["fastworker_median"]
        si, fi = iso["stock_median"], iso["fastworker_median"]
        lines.append([
            r["config"], r["workload"], f"{iso['case']} ({iso['n']:,})",
            f"{si:,.1f} / {fi:,.1f} ({si / fi:.1f}x)",
            f"{s['sm_us_per_task']:,.0f} / {f['sm_us_per_task']:,.0f} "
            f"({s['sm_us_per_task'] / f['sm_us_per_task']:.1f}x)",
            f"{s['sm_us_per_task'] / si:.1f}x / {f['sm_us_per_task'] / fi:.1f}x",
            f"{s['cpu_us_per_task']:,.0f} / {f['cpu_us_per_task']:,.0f} ({r['cpu_ratio']:.2f}x)",
            f"{s['tasks_per_s']:,.0f} / {f['tasks_per_s']:,.0f} "
            f"({f['tasks_per_s'] / s['tasks_per_s']:.2f}x)",
        ])
    return _table(header, lines, 3, markdown) if lines else ""


DISPATCH_CONFIGS = ("stock", "stock+plugin", "fastworker", "fastworker+plugin",
                    "fastworker-inline", "fastworker-inline+plugin",
                    # runs before 2026-12-04 (the event-loop executor was on by default)
                    "fastworker-no-inline", "fastworker-no-inline+plugin")


def dispatch_table(record: dict, markdown: bool = False) -> str:
    """Dispatch rows: per cluster size and workload, tasks/s and scheduler CPU per task
    of each configuration, with ratios to stock."""
    rows = record.get("dispatch", {}).get("rows", [])
    configs = [c for c in DISPATCH_CONFIGS if any(c in r["medians"] for r in rows)]
    header = ["workers", "workload", "tasks"]
    header += [f"{c} tasks/s" for c in configs]
    header += [f"{c} sched µs/task" for c in configs]
    lines = []
    for r in rows:
        m = r["medians"]
        line = [str(r["workers"]), r["workload"], f"{m['stock']['tasks']:,.0f}"]
        for c in configs:
            cell = f"{m[c]['tasks_per_s']:,.0f}"
            line.append(cell if c == "stock" else f"{cell} ({r['speedup'][c]:.2f}x)")
        for c in configs:
            cell = f"{m[c]['scheduler_us_per_task']:,.0f}"
            line.append(cell if c == "stock" else f"{cell} ({r['scheduler_cpu_ratio'][c]:.2f}x)")
        lines.append(line)
    return _table(header, lines, 2, markdown)


def describe_run(record: dict) -> list[str]:
    """What was run, where and when: a few lines for the top of table.md."""
    env = record["environment"]
    lines = [
        f"Run of {env['date']} on {env.get('cpu_model', '?')}, {env['cpus']} cores, "
        f"{env.get('ram_gib', '?')} GiB RAM, {env.get('os', env['platform'])}; "
        f"Python {env['python']}, dask {env['dask']}, distributed {env['distributed']}, "
        f"fastworker {env['fastworker']}"
        + (f" (commit {env['git_commit']})" if env.get("git_commit") else "")
        + ".",
        f"Command: `{record.get('command', '?')}`; {record.get('elapsed_s', 0):.0f} s in all.",
    ]
    e2e = record.get("e2e")
    if e2e:
        info = e2e["info"]
        lines.append(
            f"End to end: {info['repeats']} repeats per workload and implementation, task "
            f"budget {info['tasks']:,}: "
            + "; ".join(f"{k}: {v}" for k, v in info["workloads"].items())
            + "."
        )
    dispatch = record.get("dispatch")
    if dispatch:
        info = dispatch["info"]
        lines.append(
            f"Dispatch: {info['repeats']} repeats per workload and configuration on "
            f"{', '.join(map(str, info['sizes']))} worker processes: "
            + "; ".join(f"{k}: {v}" for k, v in info["workloads"].items())
            + "."
        )
    return lines


def text_report(record: dict) -> str:
    """What run.py prints at the end: both tables, plain text."""
    out = []
    if record.get("rows"):
        out += ["Isolated state machine (medians; speedup = stock time / fastworker time)",
                isolated_table(record), ""]
    if record.get("e2e", {}).get("rows"):
        out += ["End to end on LocalCluster(processes=True) (medians, stock / fastworker)",
                e2e_table(record), ""]
    levels = levels_table(record)
    if levels:
        out += ["Four levels per workload (stock / fastworker, ratio in brackets)", levels, ""]
    if record.get("dispatch", {}).get("rows"):
        threads = record["dispatch"]["info"].get("threads_per_worker", 1)
        out += [f"Low-latency dispatch, {threads}-thread worker processes (medians; ratios to stock)",
                dispatch_table(record), ""]
    return "\n".join(out)


def markdown_report(record: dict) -> str:
    out = [f"**Note:** {record['note']}\n"] if record.get("note") else []
    out += [line + "\n" for line in describe_run(record)]
    if record.get("rows"):
        counts = sorted({len(r["stock"]) for r in record["rows"]})
        out += ["## Isolated state machine", "",
                f"Medians of {'-'.join(map(str, counts))} repeats, stock and fastworker "
                "alternating; speedup = stock time / fastworker time.", "",
                isolated_table(record, markdown=True), ""]
    if record.get("e2e", {}).get("rows"):
        out += ["## End to end", "",
                f"Medians of {record['e2e']['info']['repeats']} repeats, stock / fastworker. *speedup*: stock wall time / "
                "fastworker wall time; *CPU ratio*: stock worker CPU per task / fastworker's; "
                "*in state machine*: time inside the workers' state machine as a share of "
                "their process CPU time. fastworker runs its default configuration (every task "
                "in the thread pool, through the fast pool path); *+ event loop*: the same "
                "ratios for fastworker opted in to its event-loop executor "
                "(`fastworker.inline.automatic: true`).", "",
                e2e_table(record, markdown=True), ""]
    levels = levels_table(record, markdown=True)
    if levels:
        out += ["## Four levels per workload", "",
                "Stock / fastworker medians, the ratio in brackets: the isolated state "
                "machine (the lifecycle scenario of the same shape, µs per task), the state "
                "machine inside the live workers (CPU µs per executed task), the whole worker "
                "processes' CPU per task and tasks/s, from this run; *live / isolated*: "
                "each implementation's live state machine cost over its isolated cost.", "",
                levels, ""]
    if record.get("dispatch", {}).get("rows"):
        info = record["dispatch"]["info"]
        out += ["## Low-latency dispatch", "",
                f"Medians of {info['repeats']} repeats, the configurations alternating; "
                f"scheduler and every worker ({info.get('threads_per_worker', 1)} thread(s), no "
                "nanny) in processes of their own. "
                + ("Only the measured configuration's cluster was alive: each repeat "
                   "started (and warmed up) its own cluster and closed it after. "
                   if info.get("one_cluster_at_a_time") else "")
                + "*plugin*: `fastworker.SchedulerPlugin` on the scheduler; fastworker workers "
                "pace their own stream to the scheduler in both fastworker columns. In "
                "brackets: tasks/s over stock's, and scheduler CPU per task over stock's "
                "(below 1: cheaper).", "",
                dispatch_table(record, markdown=True), ""]
    return "\n".join(out)


# --- plots -----------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lifecycle(record: dict, path: str) -> bool:
    """µs per task against N, log axes, one panel per scenario; min-max bars."""
    rows = [r for r in record.get("rows", []) if r["group"] == "lifecycle"]
    if not rows:
        return False
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, NullLocator

    cases = list(dict.fromkeys(r["case"] for r in rows))
    ncols = min(4, len(cases))
    nrows = -(-len(cases) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.5, 3.4 * ncols), 2.9 * nrows + 0.4),
                             squeeze=False)
    for ax, case in zip(axes.flat, cases):
        mine = sorted((r for r in rows if r["case"] == case), key=lambda r: r["n"])
        for impl in IMPLS:
            xs = [r["n"] for r in mine]
            med = [statistics.median(r[impl]) for r in mine]
            lo = [m - min(r[impl]) for m, r in zip(med, mine)]
            hi = [max(r[impl]) - m for m, r in zip(med, mine)]
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=impl,
                        color=COLOURS[impl])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([r["n"] for r in mine], [f"{r['n']:,}" for r in mine])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(case, fontsize=10)
        ax.set_xlabel("N (tasks)")
        ax.set_ylabel("µs per task")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(cases):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Task lifecycles through one WorkerState (median, min-max)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_e2e(record: dict, path: str) -> bool:
    """Bars per (cluster, workload): wall time and worker CPU per task, both."""
    rows = record.get("e2e", {}).get("rows", [])
    if not rows:
        return False
    plt = _pyplot()
    labels = [f"{r['config']}\n{r['workload']}" for r in rows]
    metrics = [
        ("wall", "wall time (s)", "wall_speedup"),
        ("cpu_us_per_task", "worker CPU per task (µs)", "cpu_ratio"),
    ]
    impls = [i for i in (*IMPLS, "fastworker_inline") if f"{i}_median" in rows[0]]
    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.05 * len(rows) + 2), 7.6))
    width = 0.76 / len(impls)
    for ax, (key, title, ratio) in zip(axes, metrics):
        xs = range(len(rows))
        for k, impl in enumerate(impls):
            vals = [r[f"{impl}_median"][key] for r in rows]
            bars = ax.bar([x + (k - (len(impls) - 1) / 2) * width for x in xs], vals, width,
                          label=impl.replace("_", " "),
                          color=COLOURS[impl])
            if impl == "fastworker":
                for bar, r in zip(bars, rows):
                    ax.annotate(f"{r[ratio]:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(title + ", median", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("End to end on LocalCluster(processes=True); over the bars: stock / fastworker",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- files -----------------------------------------------------------------------


def write_all(record: dict, out: str) -> list[str]:
    """table.md and the plots into ``out``; returns the paths written."""
    os.makedirs(out, exist_ok=True)
    written = []
    path = os.path.join(out, "table.md")
    with open(path, "w") as f:
        f.write(markdown_report(record))
    written.append(path)
    for name, plot in (("lifecycle.png", plot_lifecycle), ("e2e.png", plot_e2e)):
        path = os.path.join(out, name)
        if plot(record, path):
            written.append(path)
        elif os.path.exists(path):  # an earlier run's plot would not match this record
            os.remove(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a results.json written by benchmarks/run.py")
    parser.add_argument("--out", help="folder for table.md and the plots (default: the "
                        "results' folder); the results.json is copied there too")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        record = json.load(f)
    out = args.out or os.path.dirname(os.path.abspath(args.results))
    os.makedirs(out, exist_ok=True)
    target = os.path.join(out, "results.json")
    if not os.path.exists(target) or not os.path.samefile(args.results, target):
        shutil.copyfile(args.results, target)
    print(text_report(record))
    for path in write_all(record, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
