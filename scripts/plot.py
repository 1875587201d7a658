"""Curves behind the tables: test top-1 per epoch (and, with --parts, every loss part), methods side by side.

    python scripts/plot.py results/cifar10_2k_resnet20 -o curves.png         # the committed summaries
    python scripts/plot.py runs/compare --parts                               # -> runs/compare/curves.png
    python scripts/plot.py runs/dml_resnet32_cifar100_seed0 runs/dml_resnet32_cifar100_seed1 --head ens

What it reads: run folders (their metrics.jsonl; the method from results.json, else from the folder's name),
run summaries (<method>/seed<S>.json, written by compare.py --results) and folders holding either (compare.py's
--out-dir or --results folder: results/*/). Runs of one method are drawn as one line, the mean over their
seeds, in a band from the lowest to the highest seed; a folder of runs given beside another keeps its runs
apart (results/a results/b: `dml (a)`, `dml (b)`), while run folders given one by one join their method.

The figure goes to -o PATH, else curves.png beside the first path given (in it, for a folder), unless git
tracks that file (a committed figure is redrawn only when -o names it). Epochs are whole on every axis. The
top-1 panel comes twice: every epoch, and the last quarter of the epochs at a scale where the methods part
(when that quarter holds 2 epochs or more). --head: `student` (default) is the mean top-1 of the networks a run
deploys (FFSD's leader, every student s<i> of the others: the table's "mean student"); any head the runs log
(ens, fused, s0, leader) instead. --parts adds a panel per loss part as logged (every part already weighted; a part
of every student, ce_s0, ce_s1, ..., is drawn as their mean, ce_s*), or only those named: --parts loss,ce_s*,kd_s*.
matplotlib is needed here only (pip install matplotlib).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import read_metrics  # noqa: E402  (metrics.jsonl as one record per epoch)

ORDER = ("vanilla", "dml", "kdcl", "ffl", "ffcl", "fefr", "ffsd", "mkb_cl")  # the README table's; others after
NOT_PARTS = ("epoch", "lr", "seconds", "images_per_s")
NOT_PART_PREFIXES = ("top1_", "top5_", "top_share_")


def die(message):
    """A usage error: one sentence on stderr, exit status 2 (as the method scripts do)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="RUN_OR_RESULTS_DIR",
                   help="run folders, run summaries (seed<S>.json) or folders holding them")
    p.add_argument("-o", "--out", default=None,
                   help="the PNG to write (default: curves.png beside the first path, in it for a folder)")
    p.add_argument("--head", default="student", help="student (the deployed networks' mean), or a head: ens, s0 ...")
    p.add_argument("--parts", nargs="?", const="all", default=None, metavar="NAMES",
                   help="add a panel per loss part (all, or a comma list such as loss,ce_s*,kd_s*)")
    p.add_argument("--title", default=None, help="the figure's title (default: the paths given)")
    return p.parse_args(argv)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        die(f"cannot read {path} ({type(e).__name__})")


def run_folder(folder):
    """A run folder as {method, seed, curve}: metrics.jsonl, the method from results.json (else from the folder's
    name: <method>_<arch>_..., or <method>/seed<S> as compare.py lays its runs out)."""
    curve = read_metrics(os.path.join(folder, "metrics.jsonl"))  # an epoch's last line; a line a kill cut skipped
    if not curve:
        die(f"{folder}/metrics.jsonl holds no epoch's record")
    results = read_json(os.path.join(folder, "results.json")) if os.path.isfile(os.path.join(folder, "results.json")) \
        else {}
    args = results.get("args") or (read_json(os.path.join(folder, "args.json"))
                                   if os.path.isfile(os.path.join(folder, "args.json")) else {})
    name = os.path.basename(os.path.normpath(folder))
    if re.fullmatch(r"seed\d+", name):
        name = os.path.basename(os.path.dirname(os.path.normpath(folder)))
    known = [m for m in ORDER if name == m or name.startswith(m + "_")]  # runs/<method>_<arch>_<data>_seed<S>
    method = results.get("method") or (max(known, key=len) if known else name)
    return {"method": method, "seed": args.get("seed"), "curve": curve}


def summary_file(path):
    """A run summary written by compare.py --results (results.json plus its curve); None if it is not one."""
    summary = read_json(path)
    if isinstance(summary, dict) and isinstance(summary.get("curve"), list) and "method" in summary:
        return {"method": summary["method"], "seed": summary.get("seed"), "curve": summary["curve"]}
    return None


def find_runs(path):
    """(runs, whether `path` is a collection): the run itself, or every run and summary found under it."""
    if not os.path.exists(path):
        die(f"{path} does not exist")
    if os.path.isfile(path):
        run = summary_file(path) if path.endswith(".json") else None
        if run is None:
            die(f"{path} is not a run summary (a JSON file with a method and its per-epoch curve)")
        return [run], False
    if os.path.isfile(os.path.join(path, "metrics.jsonl")):
        return [run_folder(path)], False
    runs = []
    for folder, subfolders, files in os.walk(path):
        subfolders.sort()
        if "metrics.jsonl" in files:
            runs.append(run_folder(folder))
            subfolders.clear()  # a run's own sub-runs (FFCL's pretrain/) are not runs of the comparison
            continue
        runs += [r for f in sorted(files) if re.fullmatch(r"seed\d+\.json", f)
                 for r in [summary_file(os.path.join(folder, f))] if r is not None]
    return runs, True


def group_runs(paths):
    """{label: [runs]}: one group per method, and per folder of runs where several are given; in ORDER."""
    found = [(path, *find_runs(path)) for path in paths]
    sources = {os.path.basename(os.path.normpath(p)) if collection else None for p, _, collection in found}
    groups = {}
    for path, runs, collection in found:
        where = os.path.basename(os.path.normpath(path)) if collection else "runs"
        for run in (r for r in runs if r["curve"]):  # a run that has not finished an epoch has nothing to draw
            label = run["method"] if len(sources) == 1 else f"{run['method']} ({where})"
            groups.setdefault(label, []).append(run)
    if not groups:
        die(f"no runs found in {', '.join(paths)} (run folders with a metrics.jsonl of at least one epoch, or "
            f"seed<S>.json summaries)")
    rank = {method: i for i, method in enumerate(ORDER)}
    return dict(sorted(groups.items(), key=lambda item: rank.get(item[1][0]["method"], len(ORDER))))


def head_top1(record, head):
    """The top-1 a curve shows for one epoch's record: the head asked for, or the deployed networks' mean."""
    if head != "student":
        return record.get(f"top1_{head}")
    deployed = [v for k, v in record.items() if re.fullmatch(r"top1_s\d+", k)]
    if "top1_leader" in record:  # FFSD deploys its leader alone
        deployed = [record["top1_leader"]]
    return sum(deployed) / len(deployed) if deployed else None


def part_values(record):
    """{panel name: value} of one epoch's loss parts (and anything else logged per epoch, as KDCL's weights);
    a part of every student (ce_s0, ce_s1, ...) is their mean, ce_s*."""
    folded = {}
    for key, value in record.items():
        if key in NOT_PARTS or key.startswith(NOT_PART_PREFIXES) or not isinstance(value, (int, float)):
            continue
        folded.setdefault(re.sub(r"_s\d+$", "_s*", key), []).append(value)
    return {name: sum(values) / len(values) for name, values in folded.items()}


def band(runs, value_of):
    """(epochs, mean, low, high) over the runs of a group, at every epoch some run has a value for."""
    by_epoch = {}
    for run in runs:
        for record in run["curve"]:
            value = value_of(record)
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(record["epoch"], []).append(value)
    epochs = sorted(by_epoch)
    return (epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], [min(by_epoch[e]) for e in epochs],
            [max(by_epoch[e]) for e in epochs])


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        die("plot.py draws with matplotlib, which is not installed here: pip install matplotlib")
    return plt


def draw(ax, groups, colors, value_of, first_epoch=1):
    """One line per group (the mean over its runs) in its band (lowest to highest run); returns the values drawn."""
    from matplotlib.ticker import MaxNLocator  # matplotlib is there: pyplot() came first
    drawn = []
    for label, runs in groups.items():
        epochs, mean, low, high = band(runs, value_of)
        keep = [i for i, e in enumerate(epochs) if e >= first_epoch]
        if not keep:
            continue
        epochs, mean, low, high = ([xs[i] for i in keep] for xs in (epochs, mean, low, high))
        ax.plot(epochs, mean, color=colors[label], lw=1.4, label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(epochs, low, high, color=colors[label], alpha=0.15, lw=0)
        drawn += low + high
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    ax.grid(alpha=0.3)
    return drawn


def plot(groups, out, head="student", parts=None, title=None):
    plt = pyplot()
    palette = plt.get_cmap("tab10").colors
    colors = {label: palette[i % len(palette)] for i, label in enumerate(groups)}
    part_names = []
    if parts is not None:
        for runs in groups.values():
            for run in runs:
                part_names += [n for n in part_values(run["curve"][0]) if n not in part_names]
        if parts != "all":
            wanted = [n.strip() for n in parts.split(",") if n.strip()]
            missing = [n for n in wanted if n not in part_names]
            if missing:
                die(f"no run logs the part(s) {', '.join(missing)}; they log {', '.join(part_names)}")
            part_names = wanted
    columns = 2 if not part_names else 3
    rows = 1 + math.ceil(len(part_names) / columns)
    fig = plt.figure(figsize=(5 * columns, 3.6 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, columns)
    what = "the deployed networks (their mean)" if head == "student" else f"head {head}"
    last_epoch = max(r["epoch"] for runs in groups.values() for run in runs for r in run["curve"])
    first = max(1, math.floor(0.75 * last_epoch) + 1)  # the zoom: the last quarter, when it spans 2 epochs or more
    with_zoom = last_epoch - first >= 1
    ax = fig.add_subplot(grid[0, 0:columns - 1] if with_zoom else grid[0, :])
    if not draw(ax, groups, colors, lambda r: head_top1(r, head)):
        die(f"no run logs a test top-1 for --head {head}")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"test top-1 of {what}, every epoch")
    if with_zoom:
        zoom = fig.add_subplot(grid[0, columns - 1])
        values = draw(zoom, groups, colors, lambda r: head_top1(r, head), first)
        if values:
            margin = 0.05 * (max(values) - min(values) or 1)
            zoom.set_ylim(min(values) - margin, max(values) + margin)
        zoom.set_title(f"epochs {first}-{last_epoch}")
    for i, name in enumerate(part_names):
        part_ax = fig.add_subplot(grid[1 + i // columns, i % columns])
        draw(part_ax, groups, colors, lambda r, name=name: part_values(r).get(name))
        logging = [label for label, runs in groups.items() if any(name in part_values(r) for run in runs
                                                                  for r in run["curve"][:1])]
        part_ax.set_title(name + (" (mean over the students)" if name.endswith("_s*") else "")
                          + (f": {logging[0]}" if len(logging) == 1 else ""))
        if min((v for g in groups.values() for run in g for r in run["curve"]
                for v in [part_values(r).get(name)] if v is not None), default=0) > 0:
            part_ax.set_yscale("log")
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title}\nline: the mean over a method's runs (seeds); band: from the lowest to the highest",
                 fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def default_out(path):
    """curves.png beside `path` (in it, for a folder); one sentence where git tracks that file."""
    out = os.path.join(path if os.path.isdir(path) else os.path.dirname(path) or ".", "curves.png")
    try:
        is_tracked = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(out)), "ls-files",
                                     "--error-unmatch", "curves.png"], capture_output=True, timeout=20,
                                    check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        is_tracked = False
    if is_tracked:
        die(f"{out} is a committed figure; pass -o PATH to draw elsewhere (-o {out} redraws it)")
    return out


def main(argv=None):
    opts = parse(argv)
    if opts.out is None:
        opts.out = default_out(opts.paths[0]) if os.path.exists(opts.paths[0]) else "curves.png"
    if not opts.out.lower().endswith(".png"):
        die(f"--out must name a .png file, got '{opts.out}'")
    out = plot(group_runs(opts.paths), opts.out, opts.head, opts.parts, opts.title or ", ".join(opts.paths))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
