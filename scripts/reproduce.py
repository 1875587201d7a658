"""Reproduce a paper's table: run its rows (scripts/published.py) in the paper's setting over several seeds,
compute from our runs the statistic the paper reports, and judge each row.

    python scripts/reproduce.py --paper ffsd --table I --jobs 2 --results results/reproduce   # 3 seeds, as Table I
    python scripts/reproduce.py --paper kdcl --table 2 --imagenet-dir /data/imagenet
    python scripts/reproduce.py --paper dml        # DML's rows as KDCL, FFSD and MKB-CL print them
    python scripts/reproduce.py --paper ffsd --quick          # the machinery on CPU: synthetic data, one epoch
    python scripts/reproduce.py --paper ffsd --render results/reproduce      # the table again, from summaries

Runs. A row's run is `<method>.py --recipe R FLAGS` in its method's own recipe, or `<method>.py FLAGS'` with
another paper's recipe given as its shared flags (DML in KDCL's setting); its baseline is trained alone
(baseline_command). Identical runs are trained once, whichever rows need them: every head of FFSD's Table I
network comes from one FFSD run, and one baseline of one network serves them all. Every other flag goes to every
run and beats the recipe (e.g. --lr-warmup 5, --device cuda). Runs go through scripts/compare.py's runner:
OUT/<run>/<script>/seed<S>, resumable, --jobs at once, summaries under --results. By default as many seeds as the
paper's figures average (FFSD's Table I: 3, KDCL's CIFAR: 5; one where the paper does not say).

The paper's statistic, from each run's per-epoch curve: its epoch (the best epoch where the paper reports it, else
the last), over the seeds its statistic (the median where it reports a median, else the mean) and spread (the
population std where it uses one, else the sample std), of its metric (FFSD's Ens is any-student-correct: head
`any`, with our softmax ensemble `ens` printed beside it). Gains are paired by seed, in the paper's units.

Verdict. reproduced: the published figure lies within ours +- max(our spread, the paper's spread, FLOOR points);
below / above: outside that band. Not judged: the row was skipped (its data is not here) or a run failed, fewer
runs than the paper's finished, a run collapsed (shown as such), the paper prints no figure, or --quick. A row
without a published figure but with a published gain (FEFR) is judged on the gain.

Exit status: 0 when every row ran; 1, with one sentence, when a row was skipped or a run failed; 2 for a usage
error, and when no row can run here.
"""
import argparse
import importlib
import json
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

FLOOR = 0.5  # points: the largest std FFSD's Table I prints for one network trained alone (ResNet-56, 0.50)
# --quick: every row on 100 synthetic images for one epoch, resnet20 (the runs, summaries and table, not accuracy)
QUICK = ["--dataset", "synthetic", "--limit-train", "100", "--limit-test", "50", "--epochs", "1",
         "--batch-size", "50", "--device", "cpu"]
QUICK_ARCH = "resnet20"
QUICK_EXTRAS = {("kdcl", None): ["--holdout-per-class", "2"],  # 10 synthetic classes: hold out 20 of the 100 images
                ("mkb_cl", "paper-imagenet"): ["--embed-dim", "1024"]}  # stage 1 at 32 px is 16 x 16
DATA_NAMES = {"cifar10": ("CIFAR-10", "cifar-10-batches-py"), "cifar100": ("CIFAR-100", "cifar-100-python")}
SPREAD_NAMES = {"population": "pop. std", "sample": "sample std"}


def parse(argv=None):
    keys = sorted({r["paper"] for r in published.ROWS} | {r["method"] for r in published.ROWS} - {"vanilla"})
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]).replace("FLOOR", f"{FLOOR:g}"))
    p.add_argument("--paper", required=True, help=f"a publication's rows, or a method's rows from every "
                                                  f"publication: {', '.join(keys)}")
    p.add_argument("--table", default=None, help="one of its tables (default: every table)")
    p.add_argument("--seeds", default=None, help="comma list of seeds (default: as many as the paper's runs)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores/jobs threads)")
    p.add_argument("--out-dir", default=None, help="where the runs and the table go (default runs/reproduce[-quick])")
    p.add_argument("--results", default=None, help="also write each run's summary and the table here")
    p.add_argument("--data-dir", default="./data", help="where CIFAR-10/100 are (torchvision's folders)")
    p.add_argument("--imagenet-dir", default=None, help="ImageNet (train/<class>/*, val/<class>/*); without it "
                                                        "the ImageNet rows are skipped")
    p.add_argument("--quick", action="store_true", help="every row on synthetic data for one epoch (a CPU check)")
    p.add_argument("--render", default=None, metavar="DIR", help="only re-render the table from DIR's summaries")
    opts, flags = p.parse_known_args(argv)
    if opts.paper not in keys:
        compare.die(f"no published rows for '{opts.paper}'; choose from {', '.join(keys)}")
    rows = [r for r in published.ROWS if opts.paper in (r["paper"], r["method"])]
    tables = list(dict.fromkeys(r["table"] for r in rows))
    if opts.table is not None and opts.table not in tables:
        compare.die(f"{opts.paper} has no table '{opts.table}' here; choose from {', '.join(tables)}")
    opts.rows = [r for r in rows if opts.table in (None, r["table"])]
    try:
        default = [0] if opts.quick else list(range(max(r["runs"] or 1 for r in opts.rows)))
        opts.seeds = default if opts.seeds is None else [int(s) for s in opts.seeds.split(",") if s.strip()]
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
    return opts, flags


# ================================================================================================
# Runs: the command of each run a row needs, merged with the data's, --quick's and the user's flags
# ================================================================================================

def baseline_command(setting, flags):
    """The independent-training baseline in a paper's setting ((owner, recipe)): (script, its flags), the recipe's
    shared flags given explicitly (what `<owner>.py --recipe <recipe> --baseline` trains vanilla with)."""
    return "vanilla", shared_recipe_flags(setting) + list(flags)


def command(method, setting, flags):
    """A run's (script, flags): its method's own recipe by name, another paper's recipe as its shared flags given
    explicitly, or a baseline."""
    owner, recipe = setting
    if method == "vanilla":
        return baseline_command(setting, flags)
    if owner == method:
        return method, ["--recipe", recipe, *flags]
    return method, shared_recipe_flags(setting) + list(flags)


def shared_recipe_flags(setting):
    """A paper's recipe ((owner, recipe)) as the shared flags it sets, e.g. ['--epochs', '300', ...]."""
    import common
    owner, recipe = setting
    shared = common.recipe_values(common.baseline_recipe(importlib.import_module(owner).RECIPES[recipe]))
    return [t for flag in common.recipe_flags(shared) for t in flag.split(" ", 1)]


def recipe_of(module_name, recipe_name):
    """A method file's recipe as {flag dest: value} (RECIPES holds the values under their sources)."""
    import common
    return common.recipe_values(importlib.import_module(module_name).RECIPES[recipe_name])


def script_parser(script):
    import common
    parser = common.make_parser()
    if script != "vanilla":
        importlib.import_module(script).add_arguments(parser)
    return parser


def merged(script, *token_lists):
    """The flags of several lists as one, each flag once, the last value given winning (as argparse reads them):
    [(flag, value or None), ...] in the order of first appearance."""
    parser = script_parser(script)
    tokens = [t for tokens in token_lists for t in tokens]
    actions = parser._option_string_actions
    given = list(dict.fromkeys(actions[t.split("=")[0]] for t in tokens if t.split("=")[0] in actions))
    args = parser.parse_args(tokens)
    out = []
    for action in given:
        value, flag = getattr(args, action.dest), action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append((flag if value else "--no-" + flag[2:], None))
        elif action.nargs == 0:
            out += [(flag, None)] if value else []
        else:
            out.append((flag, f"{value:g}" if isinstance(value, float) else str(value)))
    return out


def run_spec(row):
    return row["method"], row["setting"], tuple(row["flags"])


def baseline_spec(row):
    b = row["baseline"]
    return None if b is None else (b["method"], b["setting"], tuple(b["flags"]))


def folder_name(spec):
    """A run's folder: its method, setting and flags, e.g. vanilla_ffsd-paper_students_1."""
    method, (owner, recipe), flags = spec
    return re.sub(r"[^A-Za-z0-9_.,=-]", "_", "_".join([method, f"{owner}-{recipe}", *flags]).replace("--", ""))


def plan(rows, opts, user_flags):
    """{spec: run}: every run the rows need, run = SimpleNamespace(folder, script, flags (tokens), arch); runs
    whose flags come out the same share the first one's folder."""
    runs, by_flags = {}, {}
    for row in rows:
        for spec in (run_spec(row), baseline_spec(row)):
            if spec is None or spec in runs:
                continue
            script, tokens = command(*spec)
            recipe = spec[1][1]
            data = [] if opts.quick else ["--data-dir", os.path.abspath(
                opts.imagenet_dir if row["dataset"] == "imagenet" else opts.data_dir)]
            quick = QUICK + QUICK_EXTRAS.get((script, None), []) + QUICK_EXTRAS.get((script, recipe), []) \
                if opts.quick else []
            pairs = merged(script, tokens, data, quick, user_flags)
            if opts.quick:  # every network is resnet20: one name stands for all the students
                pairs = [(f, QUICK_ARCH if f == "--arch" else v) for f, v in pairs]
                pairs += [("--arch", QUICK_ARCH)] * all(f != "--arch" for f, _ in pairs)
            key = (script, frozenset(pairs))
            if key in by_flags:
                runs[spec] = by_flags[key]
                continue
            arch = next((v for f, v in pairs if f == "--arch"), None) or \
                recipe_of(spec[1][0], recipe)["arch"]  # a recipe named by --recipe
            runs[spec] = by_flags[key] = SimpleNamespace(folder=folder_name(spec), script=script, arch=arch,
                                                         flags=[t for f, v in pairs for t in (f, v) if t is not None])
    for row in rows:  # FFCL pre-trains from the vanilla run of its seed, in its own folder (compare.py's rule)
        if row["method"] == "ffcl" and row["baseline"] and row["baseline"]["method"] == "vanilla":
            method_run, baseline = runs[run_spec(row)], runs[baseline_spec(row)]
            baseline.folder = method_run.folder
            if "--pretrain-epochs" not in method_run.flags:
                method_run.flags += ["--pretrain-epochs", "0"]
    return runs


def dataset_of(row):
    """The data set a row trains on: its --dataset flag, else its setting's recipe's."""
    flags = row["flags"]
    if "--dataset" in flags:
        return flags[flags.index("--dataset") + 1]
    owner, recipe = row["setting"]
    return recipe_of(owner, recipe)["dataset"]


def missing_data(opts, row):
    """One sentence if the row's data set is not on this machine, else None."""
    if row["dataset"] == "imagenet":
        if opts.imagenet_dir is None:
            return "ImageNet rows need --imagenet-dir DIR (DIR/train/<class>/*, DIR/val/<class>/*)"
        if not all(os.path.isdir(os.path.join(opts.imagenet_dir, d)) for d in ("train", "val")):
            return f"--imagenet-dir {opts.imagenet_dir} does not hold train/ and val/"
        return None
    name, folder = DATA_NAMES[row["dataset"]]
    if not os.path.isdir(os.path.join(opts.data_dir, folder)):
        return f"{name} is not in {opts.data_dir} (torchvision's {folder}/): put it there or pass --data-dir"
    return None


def train(runs, opts):
    """Every run, folder by folder (a baseline before the method it pre-trains); returns ({spec: {seed: summary}},
    [specs of failed runs])."""
    folders = {}
    for run in runs.values():
        folders.setdefault(run.folder, {})[run.script] = run
    failed_scripts = set()
    for folder, by_script in folders.items():
        scripts = sorted(by_script, key=lambda s: s != "vanilla")
        runner = SimpleNamespace(out_dir=os.path.join(opts.out_dir, folder), methods=scripts, seeds=opts.seeds,
                                 jobs=opts.jobs, extras={s: r.flags for s, r in by_script.items()},
                                 ffcl_needs_vanilla=scripts == ["vanilla", "ffcl"],
                                 results=os.path.join(opts.results, folder) if opts.results else None)
        os.makedirs(runner.out_dir, exist_ok=True)
        failed_scripts |= {(folder, m) for m, _ in compare.run_all(runner, [])}
    done = {spec: {s: compare.run_summary(SimpleNamespace(out_dir=os.path.join(opts.out_dir, run.folder)),
                                          run.script, s)
                   for s in opts.seeds if os.path.exists(os.path.join(opts.out_dir, run.folder, run.script,
                                                                      f"seed{s}", "results.json"))}
            for spec, run in runs.items()}
    return done, [spec for spec, run in runs.items() if (run.folder, run.script) in failed_scripts]


def load_summaries(folder, runs):
    """{spec: {seed: summary}} from folder/<run>/<script>/seed<S>.json (a --results folder)."""
    done = {}
    for spec, run in runs.items():
        sub = os.path.join(folder, run.folder, run.script)
        done[spec] = {}
        for f in sorted(os.listdir(sub)) if os.path.isdir(sub) else []:
            if f.startswith("seed") and f.endswith(".json"):
                with open(os.path.join(sub, f)) as fh:
                    summary = json.load(fh)
                done[spec][summary["seed"]] = summary
    return done


# ================================================================================================
# The paper's statistic, and the verdict
# ================================================================================================

def figure(summary, head, metric="top1", epoch=None):
    """One run's figure: the head's top-1 (or top-5) at its best epoch (epoch="best") or its last; head "mean"
    is the students' mean, epoch by epoch. None when the run did not log it."""
    def at(record):
        if head == "mean":
            values = [v for k, v in record.items() if re.fullmatch(rf"{metric}_s\d+", k)]
            return statistics.mean(values) if values else None
        return record.get(f"{metric}_{head}")
    series = [v for v in map(at, summary["curve"]) if v is not None]
    if not series:
        return None
    return max(series) if epoch == "best" else series[-1]


def paper_statistic(values, statistic):
    """Over the seeds: the median where the paper reports a median, else the mean."""
    return statistics.median(values) if statistic == "median" else statistics.mean(values)


def paper_spread(values, kind):
    """The spread over the seeds: population std where the paper uses it, else the sample std; None for one run."""
    if len(values) < 2:
        return None
    return statistics.pstdev(values) if kind == "population" else statistics.stdev(values)


def verdict(published_value, ours, our_spread=None, their_spread=None, floor=FLOOR):
    """reproduced when the published figure lies within ours +- max(our spread, theirs, floor), else below / above
    (ours against the paper's): (word, difference, tolerance)."""
    tolerance = max(our_spread or 0.0, their_spread or 0.0, floor)
    difference = ours - published_value
    word = "reproduced" if abs(difference) <= tolerance else ("below" if difference < 0 else "above")
    return word, difference, tolerance


def gain_of(value, base, kind):
    return (value / base - 1) * 100 if kind == "relative" else value - base


def published_gain(row):
    """The gain the paper prints, else its figure against its baseline's (None when either is missing)."""
    if row["published_gain"] is not None:
        return row["published_gain"]
    b = row["baseline"]
    if b is None or row["published"] is None or b["published"] is None:
        return None
    return round(gain_of(row["published"], b["published"], row["gain_kind"]), 2)


def measure(row, done):
    """{spec: {seed: summary}} -> the row's measured cells: ours and its spread, n, the paired gain, what is beside,
    the collapses."""
    runs = done.get(run_spec(row), {})
    base = done.get(baseline_spec(row), {}) if row["baseline"] else {}
    epoch, metric = row["epoch"], row["metric"]
    values = {s: figure(r, row["head"], metric, epoch) for s, r in runs.items()}
    values = {s: v for s, v in values.items() if v is not None}
    kind, stat = row["spread_kind"] or "sample", row["statistic"]
    m = {"n": len(values), "ours": None, "spread": None, "gain": None, "gain_spread": None, "n_gain": 0,
         "beside": {}, "collapsed": []}
    if values:
        m["ours"], m["spread"] = paper_statistic(list(values.values()), stat), paper_spread(list(values.values()), kind)
    if row["baseline"]:  # paired by seed
        bases = {s: figure(base[s], row["baseline"]["head"], metric, epoch) for s in values if s in base}
        gains = [gain_of(values[s], b, row["gain_kind"]) for s, b in bases.items() if b is not None]
        if gains:
            m["gain"], m["gain_spread"], m["n_gain"] = paper_statistic(gains, stat), paper_spread(gains, kind), \
                len(gains)
    for head in row["beside"]:
        beside = [v for v in (figure(r, head, metric, epoch) for r in runs.values()) if v is not None]
        if beside:
            m["beside"][head] = paper_statistic(beside, stat)
    m["other_data"] = sorted({r["args"]["dataset"] for r in runs.values() if "args" in r} - {row["dataset"]})
    m["collapsed"] = sorted({f"seed {s}: {h} at epoch {e}" for group in (runs, base) for s, r in group.items()
                             for h, e in r.get("collapsed", {}).items()})
    return m


def judge(row, m, why_not=None):
    """The row's verdict cell: reproduced / below / above, or 'not judged: ...' and why."""
    if why_not:
        return f"not judged: {why_not}"
    if m.get("other_data"):  # summaries of --quick runs, rendered again
        return f"not judged: trained on {', '.join(m['other_data'])}, not {row['dataset']}"
    if m["collapsed"]:
        return f"not judged: collapsed ({'; '.join(m['collapsed'])})"
    if row["published"] is None and row["published_gain"] is None:
        return "not judged: no published figure"
    needed = row["runs"] or 1
    n = m["n"] if row["published"] is not None else m["n_gain"]
    if n < needed:
        return f"not judged: n < paper's ({n} of {needed})" if n else "not judged: no finished run"
    if row["published"] is not None:
        word, diff, tol = verdict(row["published"], m["ours"], m["spread"], row["spread"])
    else:
        word, diff, tol = verdict(row["published_gain"], m["gain"], m["gain_spread"])
    return word + ("" if word == "reproduced" else f" ({diff:+.2f}, beyond ±{tol:.2f})")


# ================================================================================================
# The table
# ================================================================================================

def how_measured(row):
    """The paper's statistic in words (and ours where it does not say): epoch, statistic over how many runs."""
    epoch = f"{row['epoch']} epoch" if row["epoch"] else "epoch not stated (ours: last)"
    if row["statistic"] is None and row["runs"] is None:
        return f"{epoch}; runs not stated (ours: mean ± sample std)"
    stat = {"median": "median", "mean": "mean", "single": "one run", None: "statistic not stated"}[row["statistic"]]
    spread = f" ± {SPREAD_NAMES[row['spread_kind']]}" if row["spread_kind"] else \
        (" ± std of a kind not stated" if row["spread"] is not None else "")
    return f"{epoch}; {stat}{spread} of {row['runs'] or 'a number not stated of'} runs"


def what(row):
    head = {"any": "any-student-correct", "mean": "students' mean", "ens": "ens (mean softmax)"}.get(row["head"],
                                                                                                    row["head"])
    return f"{head} {'top-1' if row['metric'] == 'top1' else 'top-5'}"


def number(value, spread=None, sign="", n=None):
    if value is None:
        return "—"
    text = f"{value:{sign}.2f}" + ("" if spread is None else f" ± {spread:.2f}")
    return text + ("" if n is None else f" (n={n})")


def render(rows, measured, verdicts, runs, quick=False):
    """The table: rows of published.ROWS, measured {i: measure()}, verdicts {i: judge()}, runs plan()'s."""
    lines = []
    if quick:
        lines += [("QUICK: every row on 100 synthetic images for one epoch with resnet20; a check of the "
                   "machinery, the measured numbers mean nothing."), ""]
    lines += [("| table | row | figure | paper's statistic | published | ours | verdict | gain, published | "
               "gain, ours | ran | beside |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = {}  # (what, sentence) -> its number, shown beside every row it concerns
    for i, row in enumerate(rows):
        m = measured.get(i) or {}
        marks = [notes.setdefault((key, row[key]), len(notes) + 1) for key in ("provenance", "definition", "measured")
                 if row[key]]
        label = row["row"] + (f" [{', '.join(map(str, marks))}]" if marks else "")
        pub = "not printed" if row["published"] is None else number(row["published"], row["spread"])
        pg = published_gain(row)
        gain_pub = "—" if pg is None else number(pg, sign="+") + ("%" if row["gain_kind"] == "relative" else "") + \
            f" over {row['baseline']['method']}"
        ours = number(m.get("ours"), m.get("spread"), n=m.get("n"))
        gain = number(m.get("gain"), m.get("gain_spread"), "+", m.get("n_gain")) if row["baseline"] else "—"
        spec = run_spec(row)
        ran = f"{runs[spec].script} --arch {runs[spec].arch}" if spec in runs else "—"
        beside = ", ".join(f"our {h} {v:.2f}" for h, v in (m.get("beside") or {}).items()) or "—"
        lines.append(f"| {row['table']} | {label} | {what(row)} | {how_measured(row)} | {pub} | {ours} | "
                     f"{verdicts[i]} | {gain_pub} | {gain} | {ran} | {beside} |")
    lines += ["", (f"Verdict: reproduced when the published figure lies within ours ± max(our spread, the paper's "
                   f"spread, {FLOOR:g} points), else below or above; ours is the paper's statistic (its epoch: the "
                   f"best where it reports the best, else the last; the median of the seeds where it reports a "
                   f"median, else the mean; its kind of std, else the sample std) of the figure it reports. Not "
                   f"judged: skipped, failed, fewer runs than the paper's, a collapsed run, no published figure, "
                   f"--quick. Gains are paired by seed."), ""]
    kinds = {"provenance": "where the figure comes from", "definition": "what the figure is",
             "measured": "how the paper's statistic is known"}
    lines += [f"[{k}] {kinds[key]}: {text}." for (key, text), k in notes.items()]
    lines += ["", "Sources:"]
    for paper in dict.fromkeys(r["paper"] for r in rows):
        places = dict.fromkeys(f"Table {r['table']}: {r['place']}" for r in rows if r["paper"] == paper)
        lines.append(f"- {published.PAPERS[paper]}; {'; '.join(places)}.")
    return "\n".join(lines) + "\n"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv=None):
    opts, flags = parse(argv)
    name = opts.paper + (f"-{opts.table}" if opts.table else "")
    rows = opts.rows
    if opts.render:
        runs = plan(rows, opts, flags)
        done = load_summaries(opts.render, runs)
        measured = {i: measure(row, done) for i, row in enumerate(rows)}
        verdicts = {i: judge(row, measured[i], None if measured[i]["n"] else "no summaries")
                    for i, row in enumerate(rows)}
        text = render(rows, measured, verdicts, runs)
        write(os.path.join(opts.render, f"{name}.md"), text)
        print(text)
        return text
    skipped = {i: s for i, row in enumerate(rows) if not opts.quick for s in [missing_data(opts, row)] if s}
    if len(skipped) == len(rows):
        compare.die(f"no row of {name} can run here: {'; '.join(dict.fromkeys(skipped.values()))}")
    for i, sentence in skipped.items():
        print(f"{rows[i]['table']} / {rows[i]['row']}: skipped: {sentence}", flush=True)
    to_run = [row for i, row in enumerate(rows) if i not in skipped]
    runs = plan(to_run, opts, flags)
    print(f"{len({(r.folder, r.script) for r in runs.values()})} runs x {len(opts.seeds)} seeds "
          f"({', '.join(map(str, opts.seeds))}) for {len(to_run)} rows", flush=True)
    done, failed = train(runs, opts)
    measured, verdicts = {}, {}
    for i, row in enumerate(rows):
        measured[i] = measure(row, done) if i not in skipped else {}
        why_not = "skipped (" + skipped[i] + ")" if i in skipped else \
            "a run failed (see its log.txt)" if {run_spec(row), baseline_spec(row)} & set(failed) else \
            "--quick" if opts.quick else None
        verdicts[i] = judge(row, measured[i], why_not)
    text = render(rows, measured, verdicts, runs, opts.quick)
    write(os.path.join(opts.out_dir, f"{name}.md"), text)
    if opts.results:
        write(os.path.join(opts.results, f"{name}.md"), text)
    print("\n" + text)
    not_run = [i for i in range(len(rows)) if i in skipped or {run_spec(rows[i]), baseline_spec(rows[i])} & set(failed)]
    if not_run:
        print(f"error: {len(not_run)} of {len(rows)} rows did not run ({len(skipped)} skipped for missing data, "
              f"{len(not_run) - len(skipped)} with a failed run); the table marks them", file=sys.stderr)
        sys.exit(1)
    return text


if __name__ == "__main__":
    main()
