"""Run a paper's table with the paper's recipe over several seeds and put the published numbers beside ours.

    python scripts/reproduce.py --paper ffsd --table I --seeds 0,1,2 --jobs 2 --results results/reproduce
    python scripts/reproduce.py --paper kdcl --imagenet-dir /data/imagenet --seeds 0     # Table 2 too
    python scripts/reproduce.py --paper ffsd --quick          # the machinery on CPU: synthetic data, one epoch
    python scripts/reproduce.py --paper ffsd --render results/reproduce      # the table again, from summaries

Each row of scripts/published.py is run as `<method>.py --recipe <its recipe> <its flags>` and its baseline
(independent training: `common.py --recipe <method>`, the same recipe's shared flags) beside it, once per seed,
through scripts/compare.py's runner: OUT/<run>/<method>/seed<S>, resumable, --jobs at once, summaries under
--results. Rows that share a run (FFSD's leader, common students and fused classifier) share it. Every other
flag goes to every run and beats the recipe (e.g. --lr-warmup 5, --device cuda).

The table (OUT/<paper>.md, and under --results): per row the published top-1, ours at the last and at the best
epoch (mean ± std over seeds, n), last minus published, and the gain over the baseline, published against
measured (paired by seed, last epoch). A row whose data set is not here says so in one sentence and is skipped.
"""
import argparse
import importlib
import os
import re
import statistics
import sys
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]
import compare  # noqa: E402
import published  # noqa: E402

# --quick: every row on 100 synthetic images for one epoch (the runs, the summaries and the table, not accuracy)
QUICK = ["--dataset", "synthetic", "--limit-train", "100", "--limit-test", "50", "--epochs", "1",
         "--batch-size", "50", "--arch", "resnet20", "--device", "cpu"]
QUICK_EXTRAS = {"kdcl": ["--holdout-per-class", "2"]}  # 10 synthetic classes: hold out 20 of the 100 images
DATA_NAMES = {"cifar10": ("CIFAR-10", "cifar-10-batches-py"), "cifar100": ("CIFAR-100", "cifar-100-python")}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    papers = sorted({r["paper"] for r in published.ROWS})
    p.add_argument("--paper", required=True, help=f"whose table: {', '.join(papers)}")
    p.add_argument("--table", default=None, help="one of its tables (default: every table of the paper)")
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores/jobs threads)")
    p.add_argument("--out-dir", default=None, help="where the runs and the table go (default runs/reproduce[-quick])")
    p.add_argument("--results", default=None, help="also write each run's summary and the table here")
    p.add_argument("--data-dir", default="./data", help="where CIFAR-10/100 are (torchvision's folders)")
    p.add_argument("--imagenet-dir", default=None, help="ImageNet (train/<class>/*, val/<class>/*); without it "
                                                        "the ImageNet rows are skipped")
    p.add_argument("--quick", action="store_true", help="every row on synthetic data for one epoch (a CPU check)")
    p.add_argument("--render", default=None, metavar="DIR", help="only re-render the table from DIR's summaries")
    opts, flags = p.parse_known_args(argv)
    if opts.paper not in papers:
        compare.die(f"no published rows for paper '{opts.paper}'; choose from {', '.join(papers)}")
    tables = list(dict.fromkeys(r["table"] for r in published.ROWS if r["paper"] == opts.paper))
    if opts.table is not None and opts.table not in tables:
        compare.die(f"{opts.paper} has no table '{opts.table}' here; choose from {', '.join(tables)}")
    try:
        opts.seeds = [int(s) for s in opts.seeds.split(",") if s.strip()]
    except ValueError:
        compare.die(f"--seeds must be a comma list of integers, got '{opts.seeds}'")
    if opts.jobs < 1:
        compare.die(f"--jobs must be at least 1, got {opts.jobs}")
    for flag in ("--seed", "--out-dir", "--resume", "--recipe", "--data-dir"):
        if any(f == flag or f.startswith(flag + "=") for f in flags):
            compare.die(f"{flag} is set by reproduce.py itself")
    if opts.render and not os.path.isdir(opts.render):
        compare.die(f"--render {opts.render} is not a folder of run summaries")
    opts.out_dir = os.path.abspath(opts.out_dir or ("runs/reproduce-quick" if opts.quick else "runs/reproduce"))
    opts.rows = [r for r in published.ROWS if r["paper"] == opts.paper and opts.table in (None, r["table"])]
    return opts, flags


def run_name(row):
    """The folder of a row's run: rows with the same method, recipe and flags share it."""
    return re.sub(r"[^A-Za-z0-9_.,=-]", "_", "_".join([row["method"], row["recipe"], *row["flags"]]).replace("--", ""))


def baseline_flags(row):
    """The baseline's own flags: the row's recipe's shared flags, given explicitly (what `<method>.py --recipe
    <recipe> --baseline` trains vanilla with), for vanilla (common.py) and another method (FEFR's DML) alike."""
    import common
    recipe = common.baseline_recipe(importlib.import_module(row["method"]).RECIPES[row["recipe"]])
    return [token for flag in common.recipe_flags(recipe) for token in flag.split(" ", 1)]


def dataset_of(row):
    """The data set a row trains on: its --dataset flag, else its recipe's."""
    flags = row["flags"]
    if "--dataset" in flags:
        return flags[flags.index("--dataset") + 1]
    return importlib.import_module(row["method"]).RECIPES[row["recipe"]]["dataset"]


def missing_data(opts, row):
    """One sentence if the row's data set is not on this machine, else None."""
    dataset = dataset_of(row)
    if dataset == "imagenet":
        if opts.imagenet_dir is None:
            return "ImageNet rows need --imagenet-dir DIR (DIR/train/<class>/*, DIR/val/<class>/*)"
        if not all(os.path.isdir(os.path.join(opts.imagenet_dir, d)) for d in ("train", "val")):
            return f"--imagenet-dir {opts.imagenet_dir} does not hold train/ and val/"
        return None
    name, folder = DATA_NAMES[dataset]
    if not os.path.isdir(os.path.join(opts.data_dir, folder)):
        return f"{name} is not in {opts.data_dir} (torchvision's {folder}/): put it there or pass --data-dir"
    return None


def runner_opts(opts, row, folder, flags):
    """compare.py's runner for one run: the baseline first (FFCL pre-trains from it), then the method; and the
    flags of both: the row's, the data's, --quick's and the user's, in that order (the last one wins)."""
    method, baseline = row["method"], row["baseline"]
    data = [] if opts.quick else ["--data-dir", os.path.abspath(opts.imagenet_dir if dataset_of(row) == "imagenet"
                                                                  else opts.data_dir)]
    import common
    shared = set(vars(common.make_parser().parse_args([])))
    is_shared = [(t if t.startswith("--") else row["flags"][i - 1])[2:].replace("-", "_") in shared
                 for i, t in enumerate(row["flags"])]  # a row's method flags (--ensemble linear) go to the method only
    flags = [t for t, keep in zip(row["flags"], is_shared) if keep] + data + QUICK * opts.quick + flags
    given = {f.split("=")[0].replace("--no-", "--") for f in flags if f.startswith("--")}
    own = baseline_flags(row)  # a recipe's flags given explicitly: only those the flags above leave alone
    own = [t for i, t in enumerate(own)
           if (t if t.startswith("--") else own[i - 1]).replace("--no-", "--") not in given]
    extras = {method: ["--recipe", row["recipe"]] + [t for t, keep in zip(row["flags"], is_shared) if not keep]
              + QUICK_EXTRAS.get(method, []) * opts.quick,
              baseline: own + QUICK_EXTRAS.get(baseline, []) * opts.quick}
    ffcl_pretrains = method == "ffcl" and baseline == "vanilla"
    if ffcl_pretrains:
        extras["ffcl"] += ["--pretrain-epochs", "0"]  # the vanilla run of the same seed is the pre-training
    return SimpleNamespace(out_dir=os.path.join(opts.out_dir, folder), methods=[baseline, method], seeds=opts.seeds,
                           jobs=opts.jobs, extras=extras, ffcl_needs_vanilla=ffcl_pretrains,
                           results=os.path.join(opts.results, folder) if opts.results else None), flags


def head_value(run, head, which):
    """A run's top-1 of one head at the last ('final') or best epoch; 'mean' = the mean of the deployed students."""
    if head != "mean":
        return run[which][head]
    deployed = ["leader"] if "leader" in run[which] else [h for h in run[which] if h[0] == "s" and h[1:].isdigit()]
    return statistics.mean(run[which][h] for h in deployed)


def measure(row, runs):
    """{seed: summary} of the method's and the baseline's runs -> the measured cells of the row."""
    method, baseline = runs.get(row["method"], {}), runs.get(row["baseline"], {})
    last = [head_value(r, row["head"], "final") for r in method.values()]
    best = [head_value(r, row["head"], "best") for r in method.values()]
    gain = [head_value(r, row["head"], "final") - head_value(baseline[s], row["baseline_head"], "final")
            for s, r in method.items() if s in baseline]
    return {"last": compare.mean_std(last), "best": compare.mean_std(best), "gain": compare.mean_std(gain),
            "n": len(last), "n_gain": len(gain)}


def published_gain(row):
    if row["published_gain"] is not None:
        return row["published_gain"]
    if row["published"] is not None and row["baseline_published"] is not None:
        return round(row["published"] - row["baseline_published"], 2)
    return None


def cell(ms, n, sign=""):
    return "—" if ms is None else f"{compare.fmt(ms, sign)} (n={n})"


def render(rows, measured, skipped, quick=False):
    """The side-by-side table: rows of published.ROWS, measured {row index: measure()}, skipped {index: sentence}."""
    lines = []
    if quick:
        lines += ["QUICK: every row on 100 synthetic images for one epoch; a check of the machinery, the measured "
                  "numbers mean nothing.", ""]
    lines += ["| table | row | published | ours, last epoch | ours, best epoch | last − published | "
              "gain over baseline: published | ours (last, paired by seed) |",
              "|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(rows):
        m = measured.get(i)
        pub = "not in our copy" if row["published"] is None else f"{row['published']:.2f}"
        diff = "—" if m is None or m["last"] is None or row["published"] is None else \
            f"{m['last'][0] - row['published']:+.2f}"
        pg = published_gain(row)
        gain_pub = "—" if pg is None else f"{pg:+.2f} over {row['baseline']}"
        if i in skipped:
            ours = ["skipped"] * 2 + ["—", gain_pub, "skipped"]
        else:
            ours = [cell(m and m["last"], m and m["n"]), cell(m and m["best"], m and m["n"]), diff, gain_pub,
                    cell(m and m["gain"], m and m["n_gain"], "+")]
        lines.append(f"| {row['table']} | {row['row']} | {pub} | " + " | ".join(ours) + " |")
    lines.append("")
    settings = dict.fromkeys((r["table"], r["dataset"], r["epochs"], r["method"], r["recipe"], r["runs"],
                              r["best_or_last"]) for r in rows)
    for table, dataset, epochs, method, recipe, runs, epoch in settings:
        lines.append(f"Table {table}, {dataset}: {epochs} epochs, `{method}.py --recipe {recipe}`; published: "
                     f"{runs}, epoch {epoch}.")
    for i, sentence in skipped.items():
        lines.append(f"Skipped: table {rows[i]['table']}, {rows[i]['row']}: {sentence}.")
    lines += ["", "Sources:"] + [f"- {r['table']} / {r['row']}: {r['source']}" for r in rows]
    return "\n".join(lines) + "\n"


def load_runs(folder, methods):
    """{method: {seed: summary}} from folder/<method>/seed<S>.json (a --results folder or a run's --out-dir)."""
    import json
    runs = {}
    for method in methods:
        sub = os.path.join(folder, method)
        if os.path.isdir(sub):
            runs[method] = {}
            for f in sorted(os.listdir(sub)):
                if f.startswith("seed") and f.endswith(".json"):
                    with open(os.path.join(sub, f)) as fh:
                        summary = json.load(fh)
                    runs[method][summary["seed"]] = summary
    return runs


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv=None):
    opts, flags = parse(argv)
    name = opts.paper + (f"-{opts.table}" if opts.table else "")
    if opts.render:
        measured = {i: measure(row, load_runs(os.path.join(opts.render, run_name(row)),
                                              [row["method"], row["baseline"]])) for i, row in enumerate(opts.rows)}
        skipped = {i: "no summaries" for i, m in measured.items() if m["n"] == 0}
        text = render(opts.rows, measured, skipped)
        write(os.path.join(opts.render, f"{name}.md"), text)
        print(text)
        return text
    measured, skipped, failed, done = {}, {}, [], {}
    for i, row in enumerate(opts.rows):
        sentence = None if opts.quick else missing_data(opts, row)
        if sentence:
            print(f"{row['table']} / {row['row']}: skipped: {sentence}", flush=True)
            skipped[i] = sentence
            continue
        folder = run_name(row)
        if folder not in done:
            runner, run_flags = runner_opts(opts, row, folder, flags)
            os.makedirs(runner.out_dir, exist_ok=True)
            failed += [(f"{folder}/{m}", s) for m, s in compare.run_all(runner, run_flags)]
            done[folder] = {m: {s: compare.run_summary(runner, m, s) for s in opts.seeds
                                if compare.finished(runner, m, s)} for m in runner.methods}
        measured[i] = measure(row, done[folder])
    text = render(opts.rows, measured, skipped, opts.quick)
    write(os.path.join(opts.out_dir, f"{name}.md"), text)
    if opts.results:
        write(os.path.join(opts.results, f"{name}.md"), text)
    print("\n" + text)
    if failed:
        compare.die(f"{len(failed)} run(s) failed: {', '.join(f'{m} seed {s}' for m, s in failed)} (see their log.txt)")
    return text


if __name__ == "__main__":
    main()
