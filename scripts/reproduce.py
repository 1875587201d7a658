"""Reproduce a paper's table: run its rows (scripts/published.py) in the paper's setting over several seeds,
compute from our runs the statistic the paper reports, and judge each row; or judge anyone's figures (--judge).

    python scripts/reproduce.py --paper ffsd --table I --jobs 2 --results results/reproduce   # 3 seeds, as Table I
    python scripts/reproduce.py --paper kdcl --table 2 --imagenet-dir /data/imagenet
    python scripts/reproduce.py --paper dml        # DML's rows as KDCL, FFSD and MKB-CL print them
    python scripts/reproduce.py --paper ffsd --quick          # the machinery on CPU: synthetic data, one epoch
    python scripts/reproduce.py --paper ffsd --render results/reproduce      # the table again, from summaries
    python scripts/reproduce.py --judge 74.85 --spread 0.05 --paper-runs 3 --ours 74.62,74.91,74.70   # your runs

Runs. A row's run is `<method>.py --recipe R FLAGS` in its method's own recipe, or `<method>.py FLAGS'` with
another paper's recipe given as its shared flags (DML in KDCL's setting); its baseline is trained alone
(baseline_command). Identical runs are trained once, whichever rows need them: every head of FFSD's Table I
network comes from one FFSD run, and one baseline of one network serves them all. Every other flag goes to every
run and beats the recipe (e.g. --lr-warmup 5, --device cuda; give --render the same). Runs go through
scripts/compare.py's runner: OUT/<run>/<script>/seed<S>, resumable, --jobs at once, summaries under --results;
a run folder holding a run of other flags stops it before anything trains. Each run gets as many seeds as the
most runs any figure it serves averages (FFSD's Table I: 3, KDCL's CIFAR: 5; one where the paper does not say).

The paper's statistic, from each run's per-epoch curve: its epoch (the best epoch where the paper reports it, else
the last), over the seeds its statistic (the median where it reports a median, else the mean) and spread (the
population std where it uses one, else the sample std), of its metric (FFSD's Ens is any-student-correct: head
`any`, with our softmax ensemble `ens` printed beside it). Gains are paired by seed, in the paper's units.

Verdict (verdict(), its constants beside it). The difference d = ours - published, with the uncertainty of both
sides: each side's standard error is its sample std / sqrt(its runs) (x1.25 for a median), a side with no spread
of its own (one run, or a paper printing none) taking one run's std as 0.5 points (0.7 for a gain or an
ablation: a difference of two runs); the 90 % interval d +- t x se (Student's t, Welch's degrees of freedom) is
set against a tolerance per kind of figure: a network's accuracy +-1.0 point; a gain over a baseline or an
ablation's difference, half the claimed difference, at most 1.0 (no effect, or the opposite sign, is never within
it). reproduced: the whole interval within the tolerance, from at least two runs and the paper's number of runs;
below / above: wholly beyond it; inconclusive: neither, and the verdict says how many runs of ours would tell.
Where a paper states a gain (or its baseline's figure) our paired gain is judged the same way, in a column of its
own. Not judged, with the reason: a skipped row (its data is not here), a failed run (an exit status, a NaN in
its curve), a collapsed run, a missing run or head, a stale run (its recorded flags, or the code of its commit,
not what the row plans), --quick. Not compared: a row of which the paper's text gives no figure, and MKB-CL's EL
(see published.py).

Exit status: 0 when every row with a figure to compare was judged (--quick: every run finished), else 1 and one
sentence why; 2: a usage error or a run of other flags in the way (a run folder holding it), and when no row can
run here; 130 / 143: Ctrl-C / SIGTERM, the runs in progress ended first.
"""
import argparse
import importlib
import math
import os
import re
import statistics
import subprocess
import sys
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]
import compare  # noqa: E402
import published  # noqa: E402

# --quick: every row on 100 synthetic images for one epoch, resnet20 (the runs, summaries and table, not accuracy)
QUICK = ["--dataset", "synthetic", "--limit-train", "100", "--limit-test", "50", "--epochs", "1",
         "--batch-size", "50", "--device", "cpu"]
QUICK_ARCH = "resnet20"
QUICK_EXTRAS = {("kdcl", None): ["--holdout-per-class", "2"],  # 10 synthetic classes: hold out 20 of the 100 images
                ("mkb_cl", "paper-imagenet"): ["--embed-dim", "1024"]}  # stage 1 at 32 px is 16 x 16
DATA_NAMES = {"cifar10": ("CIFAR-10", "cifar-10-batches-py"), "cifar100": ("CIFAR-100", "cifar-100-python")}
SPREAD_NAMES = {"population": "pop. std", "sample": "sample std"}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # a bad flag: one sentence, exit status 2
        compare.die(message)


def parse(argv=None):
    keys = sorted({r["paper"] for r in published.ROWS} | {r["method"] for r in published.ROWS} - {"vanilla"})
    p = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
               epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--paper", default=None, help=f"a publication's rows, or a method's rows from every "
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
    j = p.add_argument_group("a verdict on your own figures (no run of ours)")
    j.add_argument("--judge", type=float, default=None, metavar="PUBLISHED", help="the paper's figure")
    j.add_argument("--spread", type=float, default=None, metavar="S", help="the ± it prints (none: leave it out)")
    j.add_argument("--paper-runs", type=int, default=None, metavar="N", help="its number of runs (not stated: out)")
    j.add_argument("--ours", default=None, metavar="A,B,C", help="ours, one figure per run")
    j.add_argument("--kind", choices=tuple(KIND_NAMES), default="figure",
                   help="figure: a network's accuracy; gain: over a baseline; ablation: a variant's difference")
    j.add_argument("--statistic", choices=("mean", "median"), default="mean", help="the paper's, over its runs")
    j.add_argument("--spread-kind", choices=("sample", "population"), default="sample", help="the paper's std")
    opts, flags = p.parse_known_args(argv)
    if opts.judge is not None:
        return check_judge(opts, flags), flags
    if opts.paper is None:
        compare.die("give --paper P (a paper's table, from our runs) or --judge PUBLISHED --ours A,B,C (your figures)")
    if opts.paper not in keys:
        compare.die(f"no published rows for '{opts.paper}'; choose from {', '.join(keys)}")
    rows = [r for r in published.ROWS if opts.paper in (r["paper"], r["method"])]
    tables = list(dict.fromkeys(r["table"] for r in rows))
    if opts.table is not None and opts.table not in tables:
        compare.die(f"{opts.paper} has no table '{opts.table}' here; choose from {', '.join(tables)}")
    opts.rows = [r for r in rows if opts.table in (None, r["table"])]
    try:
        opts.seeds = [0] if opts.quick and opts.seeds is None else \
            None if opts.seeds is None else [int(s) for s in opts.seeds.split(",") if s.strip()]
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


def check_judge(opts, flags):
    """--judge's figures, checked: one sentence (exit status 2) for anything that is not a verdict's input."""
    if flags or opts.paper or opts.render or opts.quick:
        compare.die(f"--judge takes --spread, --paper-runs, --ours, --kind, --statistic and --spread-kind only, "
                    f"not {' '.join(flags) or '--paper, --render or --quick'}")
    if opts.ours is None:
        compare.die("--judge needs --ours A,B,C: your figure of each run")
    try:
        opts.ours = [float(v) for v in opts.ours.split(",") if v.strip()]
    except ValueError:
        compare.die(f"--ours takes numbers separated by commas, one per run, got '{opts.ours}'")
    numbers = [opts.judge, *opts.ours] + ([opts.spread] if opts.spread is not None else [])
    if not opts.ours or not all(math.isfinite(v) for v in numbers):
        compare.die("--judge, --spread and --ours take finite numbers (--ours: at least one)")
    if opts.spread is not None and opts.spread < 0:
        compare.die(f"--spread is a standard deviation: at least 0, got {opts.spread:g}")
    if opts.paper_runs is not None and opts.paper_runs < 1:
        compare.die(f"--paper-runs must be at least 1, got {opts.paper_runs}")
    return opts


# ================================================================================================
# Runs: the command of each run a row needs, merged with the data's, --quick's and the user's flags
# ================================================================================================

def recipe_of(module_name, recipe_name):
    """A method file's recipe as {flag dest: value} (the one place that reads RECIPES: its values under sources)."""
    import common
    return common.recipe_values(importlib.import_module(module_name).RECIPES[recipe_name])


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
    shared = common.recipe_values(common.baseline_recipe({"": recipe_of(*setting)}))
    return [t for flag in common.recipe_flags(shared) for t in flag.split(" ", 1)]


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
    """{spec: run}: every run the rows need, run = SimpleNamespace(folder, script, flags (tokens), arch, dataset,
    seeds); runs whose flags come out the same share the first one's folder. Each run gets --seeds, else as many
    seeds as the most runs of a row it serves (one where the paper does not say)."""
    runs, by_flags = {}, {}
    for row in rows:
        for spec in (run_spec(row), baseline_spec(row)):
            if spec is None:
                continue
            seeds = opts.seeds or list(range(row["runs"] or 1))
            if spec in runs:
                runs[spec].seeds = sorted(set(runs[spec].seeds) | set(seeds))
                continue
            script, tokens = command(*spec)
            recipe = spec[1][1]
            data_dir = None if opts.quick else opts.imagenet_dir if row["dataset"] == "imagenet" else opts.data_dir
            data = [] if data_dir is None else ["--data-dir", os.path.abspath(data_dir)]  # --render: none needed
            quick = QUICK + QUICK_EXTRAS.get((script, None), []) + QUICK_EXTRAS.get((script, recipe), []) \
                if opts.quick else []
            pairs = merged(script, tokens, data, quick, user_flags)
            if opts.quick:  # every network is resnet20: one name stands for all the students
                pairs = [(f, QUICK_ARCH if f == "--arch" else v) for f, v in pairs]
                pairs += [("--arch", QUICK_ARCH)] * all(f != "--arch" for f, _ in pairs)
            key = (script, frozenset(pairs))
            if key in by_flags:
                runs[spec] = by_flags[key]
                runs[spec].seeds = sorted(set(runs[spec].seeds) | set(seeds))
                continue
            arch = next((v for f, v in pairs if f == "--arch"), None) or recipe_of(spec[1][0], recipe)["arch"]
            dataset = next((v for f, v in pairs if f == "--dataset"), None) or recipe_of(spec[1][0], recipe)["dataset"]
            runs[spec] = by_flags[key] = SimpleNamespace(
                folder=folder_name(spec), script=script, arch=arch, dataset=dataset, seeds=seeds,
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
    return recipe_of(*row["setting"])["dataset"]


def missing_data(opts, row):
    """One sentence if the row's data set is not on this machine, else None."""
    if row["dataset"] == "imagenet":
        if opts.imagenet_dir is None:
            return "ImageNet rows need --imagenet-dir DIR (DIR/train/<class>/*, DIR/val/<class>/*)"
        if not (os.path.isfile(opts.imagenet_dir) or all(os.path.isdir(os.path.join(opts.imagenet_dir, d))
                                                         for d in ("train", "val"))):  # a tarball: the runs read it
            return f"--imagenet-dir {opts.imagenet_dir} does not hold train/ and val/ (nor is it a tarball of them)"
        return None
    name, folder = DATA_NAMES[row["dataset"]]
    if not os.path.isdir(os.path.join(opts.data_dir, folder)):
        return f"{name} is not in {opts.data_dir} (torchvision's {folder}/): put it there or pass --data-dir"
    return None


def runners(runs, opts):
    """compare.py's runner options, one per run folder (a baseline before the method it pre-trains)."""
    folders = {}
    for run in runs.values():
        folders.setdefault(run.folder, {})[run.script] = run
    for folder, by_script in folders.items():
        scripts = sorted(by_script, key=lambda s: s != "vanilla")
        yield SimpleNamespace(out_dir=os.path.join(opts.out_dir, folder), methods=scripts,
                              seeds=sorted({s for r in by_script.values() for s in r.seeds}), jobs=opts.jobs,
                              extras={s: r.flags for s, r in by_script.items()},
                              ffcl_needs_vanilla=scripts == ["vanilla", "ffcl"],
                              results=os.path.join(opts.results, folder) if opts.results else None)


def train(runs, opts):
    """Every run, folder by folder, once no folder holds a run of other flags (else one sentence, exit status 2,
    nothing trained); returns ({spec: {seed: summary}}, [specs of failed runs])."""
    stale = [sentence for runner in runners(runs, opts) for sentence in compare.stale_runs(runner, [])]
    if stale:
        compare.die(f"{stale[0]}{f' (and {len(stale) - 1} more)' if len(stale) > 1 else ''}; it is kept: pass "
                    f"another --out-dir to train the runs this command plans")
    failed_scripts = set()
    for runner in runners(runs, opts):
        os.makedirs(runner.out_dir, exist_ok=True)
        failed_scripts |= {(os.path.basename(runner.out_dir), m) for m, _ in compare.run_all(runner, [])}
    done = {spec: {s: compare.run_summary(SimpleNamespace(out_dir=os.path.join(opts.out_dir, run.folder)),
                                          run.script, s)
                   for s in run.seeds if os.path.exists(os.path.join(opts.out_dir, run.folder, run.script,
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
                summary = compare.read_json(os.path.join(sub, f))
                done[spec][summary["seed"]] = summary
    return done


# ================================================================================================
# A run stands for the row only when it is the run the row plans
# ================================================================================================

def unusable(summary, run):
    """Why a finished run's summary does not stand for the run the row plans, or None: a NaN or infinity in its
    curve (a run that failed), another data set (a --quick run), other recorded flags, or other code."""
    seed = summary["seed"]
    bad = next(((r.get("epoch"), k, v) for r in summary.get("curve", []) for k, v in r.items()
                if isinstance(v, float) and not math.isfinite(v)), None)
    if bad:
        return f"a run failed: seed {seed}'s {bad[1]} is {bad[2]} at epoch {bad[0]}"
    recorded = summary.get("args")
    if recorded is None:  # a summary without its flags: nothing to compare
        return None
    if recorded.get("dataset") != run.dataset:
        return f"trained on {recorded.get('dataset')}, not {run.dataset}"
    differ = compare.differing_flags(recorded, compare.planned_args(run.script, run.flags + ["--seed", str(seed)]))
    if differ:
        return f"stale: seed {seed} was trained with {compare.said_flags(differ)}"
    return code_changed(summary.get("code"), run.script, seed)


CODE_DIFFS = {}  # (commit, files): the files changed since


def code_changed(code, script, seed):
    """Where the run recorded its commit: None when the files that train it (common.py, its method's file) are the
    same at this checkout's HEAD, else a sentence (also when git or the commit is not here to tell)."""
    commit = (code or {}).get("commit")
    if not commit:
        return None
    files = ("common.py",) + (() if script == "vanilla" else (f"{script}.py",))
    if (commit, files) not in CODE_DIFFS:
        try:
            done = subprocess.run(["git", "-C", ROOT, "diff", "--name-only", commit, "HEAD", "--", *files],
                                  capture_output=True, text=True, timeout=30, check=False)
            CODE_DIFFS[commit, files] = done.stdout.split() if done.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            CODE_DIFFS[commit, files] = None
    changed = CODE_DIFFS[commit, files]
    if changed is None:
        return f"stale: seed {seed} was trained at commit {commit[:10]}, which this checkout cannot compare"
    if changed:
        return f"stale: seed {seed} was trained at commit {commit[:10]}; {', '.join(changed)} changed since"
    return None


def usable_runs(done, runs):
    """done ({spec: {seed: summary}}) less the summaries unusable() refuses, and {spec: [its sentences]}."""
    kept, refused = {}, {}
    for spec, by_seed in done.items():
        kept[spec] = {}
        for seed, summary in by_seed.items():
            why = unusable(summary, runs[spec]) if spec in runs else None
            if why:
                refused.setdefault(spec, []).append(why)
            else:
                kept[spec][seed] = summary
    return kept, refused


# ================================================================================================
# The paper's statistic
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


def measure(row, done, refused=None):
    """{spec: {seed: summary}} -> the row's measured cells: ours per seed and the paper's statistic of them with its
    spread, the paired gains likewise, what is beside, and why runs are missing or cannot be used."""
    refused = refused or {}
    runs = done.get(run_spec(row), {})
    base = done.get(baseline_spec(row), {}) if row["baseline"] else {}
    epoch, metric, stat, kind = row["epoch"], row["metric"], row["statistic"], row["spread_kind"] or "sample"
    values = {s: figure(r, row["head"], metric, epoch) for s, r in runs.items()}
    values = {s: v for s, v in values.items() if v is not None}
    m = {"values": list(values.values()), "n": len(values), "ours": None, "spread": None, "gains": [], "gain": None,
         "gain_spread": None, "n_gain": 0, "beside": {}, "collapsed": [], "missing": None, "missing_gain": None,
         "refused": [*refused.get(run_spec(row), []), *(refused.get(baseline_spec(row), []) if row["baseline"]
                                                         else [])]}
    if values:
        m["ours"], m["spread"] = paper_statistic(m["values"], stat), paper_spread(m["values"], kind)
    elif runs:
        m["missing"] = f"its runs logged no {row['head']} {metric}"
    else:
        m["missing"] = f"no finished run of {row['method']}"
    if row["baseline"]:  # paired by seed
        bases = {s: figure(base[s], row["baseline"]["head"], metric, epoch) for s in values if s in base}
        m["gains"] = [gain_of(values[s], b, row["gain_kind"]) for s, b in bases.items() if b is not None]
        if m["gains"]:
            m["gain"], m["gain_spread"], m["n_gain"] = paper_statistic(m["gains"], stat), \
                paper_spread(m["gains"], kind), len(m["gains"])
        elif values:
            m["missing_gain"] = f"no finished run of its baseline ({row['baseline']['method']}) for the seeds of " \
                                f"ours" if not base else f"the baseline's runs logged no {row['baseline']['head']}"
    for head in row["beside"]:
        beside = [v for v in (figure(r, head, metric, epoch) for r in runs.values()) if v is not None]
        if beside:
            m["beside"][head] = paper_statistic(beside, stat)
    m["collapsed"] = sorted({f"seed {s}: {h} at epoch {e}" for group in (runs, base) for s, r in group.items()
                             for h, e in r.get("collapsed", {}).items()})
    return m


# ================================================================================================
# The verdict: our figure against the paper's, with the uncertainty of both, within a tolerance per kind
# ================================================================================================

TOLERANCE = 1.0  # points: a network's accuracy. Twice the largest run-to-run std the papers print for one
#                  network (FFSD Table I: ResNet-56 alone, +-0.50); the seed papers' own figures for one network
#                  differ by as much (ResNet-32 alone on CIFAR-100: 69.96 in FFSD, 69.9 in KDCL, 68.99 in MKB-CL)
CLAIM_SHARE = 0.5  # a gain or an ablation's difference: within half the claimed difference (at most TOLERANCE):
#                    proportionate to the effect, so that no effect, or the opposite sign, is never within it
ONE_RUN_STD = {"figure": 0.5, "gain": 0.7, "ablation": 0.7}  # points: the noise of one run where a side has no
#                  spread of its own (one run; a paper printing none): the papers' largest one-network std (0.50),
#                  and for a difference of two such runs sqrt(2) x 0.5
KIND_NAMES = {"figure": "a network's accuracy", "gain": "a gain over a baseline",
              "ablation": "an ablation's difference"}
T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812)  # Student's t, one-sided 95 %, df 1-10
MAX_RUNS = 1000  # the most runs "how many runs would tell" looks for


def t95(df):
    """Student's t quantile, one-sided 95 % (the two one-sided tests of a 90 % interval); df None: a known std."""
    return 1.645 if df is None else T95[df - 1] if df <= 10 else 1.645 + 1.6 / df  # within 0.01 of the table


def standard_error(std, runs, statistic):
    """The standard error of the mean of `runs` runs of spread `std`; a median's is sqrt(pi / 2) times larger."""
    return std / math.sqrt(runs) * (math.sqrt(math.pi / 2) if statistic == "median" else 1.0)


def half_width(sides):
    """The 90 % interval's half-width of a difference of independent statistics, sides = [(standard error, degrees
    of freedom or None for a known std)]: t x sqrt(sum of se^2), Welch's degrees of freedom."""
    variance = sum(se ** 2 for se, _ in sides)
    terms = sum(se ** 4 / df for se, df in sides if df)
    df = max(1, int(variance ** 2 / terms + 1e-9)) if terms else None  # rounded down (floats: not 2 to 1)
    return t95(df) * math.sqrt(variance)


def verdict(published, ours, kind="figure", spread=None, paper_runs=None, statistic="mean",
            spread_kind="sample"):
    """Ours (one figure per run) against the paper's figure (its +- `spread` of `paper_runs` runs, where it prints
    them): SimpleNamespace(word, ours, n, std, d, half, tol, needed). word: reproduced (d +- half within +-tol,
    from at least 2 runs and the paper's number), below / above (wholly beyond), else inconclusive, `needed` then
    the runs of ours that would tell at our spread (None: no number up to MAX_RUNS)."""
    n, m = len(ours), paper_runs or 1
    value = paper_statistic(ours, statistic)
    std = statistics.stdev(ours) if n > 1 else None
    if spread is not None and spread_kind == "population" and m > 1:
        spread *= math.sqrt(m / (m - 1))  # the sample std behind the paper's population std
    paper = (standard_error(ONE_RUN_STD[kind] if spread is None else spread, m, statistic),
             m - 1 if spread is not None and m > 1 else None)
    tol, d = TOLERANCE if kind == "figure" else min(TOLERANCE, CLAIM_SHARE * abs(published)), value - published

    def decide(runs):  # at our spread (the prior for one run), over `runs` runs
        ours_std = std if std is not None else ONE_RUN_STD[kind]
        half = half_width([(standard_error(ours_std, runs, statistic), runs - 1 if runs > 1 else None), paper])
        word = "below" if d + half < -tol - 1e-9 else "above" if d - half > tol + 1e-9 else \
            "reproduced" if abs(d) + half <= tol + 1e-9 and runs >= max(2, m) else "inconclusive"
        return word, half

    word, half = decide(n)
    needed = next((k for k in range(n + 1, MAX_RUNS + 1) if decide(k)[0] != "inconclusive"), None) \
        if word == "inconclusive" else None
    return SimpleNamespace(word=word, ours=value, n=n, std=std, published=published, d=d, half=half, tol=tol,
                           needed=needed, kind=kind)


def said(v):
    """A verdict in a table's cell, its word first: the difference with its 90 % interval, the tolerance, and for
    an inconclusive one the runs that would tell."""
    return f"{v.word} ({v.d:+.2f} ± {v.half:.2f} against ±{v.tol:.2f}{would_tell(v)})"


def would_tell(v):
    if v.word != "inconclusive":
        return ""
    return f"; {v.needed} runs of ours would tell" if v.needed else f"; no number of runs up to {MAX_RUNS} would tell"


def judge_line(opts):
    """--judge: one line, its first word the verdict, then the numbers it used."""
    v = verdict(opts.judge, opts.ours, opts.kind, opts.spread, opts.paper_runs, opts.statistic, opts.spread_kind)
    prior = f"{ONE_RUN_STD[v.kind]:g} taken"
    ours = f"{opts.statistic} {v.ours:.2f} of {v.n} run{'s' * (v.n > 1)} (" + \
        (f"sample std {v.std:.2f})" if v.std is not None else f"no spread of its own: {prior})")
    paper = f"{opts.judge:.2f} (" + (f"{opts.spread_kind} std {opts.spread:.2f}" if opts.spread is not None else
                                     f"no spread printed: {prior}") + \
        (f", {opts.paper_runs} run{'s' * (opts.paper_runs > 1)})" if opts.paper_runs else ", runs not stated: one)")
    return f"{v.word} ours {ours} vs published {paper}: difference {v.d:+.2f} ± {v.half:.2f} (90 % interval) " \
        f"against a tolerance of ±{v.tol:.2f} for {KIND_NAMES[v.kind]}{would_tell(v)}"


def claim_kind(row):
    """An ablation's difference (a variant of the method against the method) or a gain over another baseline."""
    return "ablation" if row["baseline"] and row["baseline"]["method"] == row["method"] else "gain"


def not_judged(m, why_not=None, quick=False):
    """Why the row as a whole is not judged (a sentence), or None: `why_not` (skipped, a run failed), a run that
    does not stand for the row, --quick (whose runs are not the paper's), a collapse."""
    if why_not:
        return why_not
    if m["refused"]:
        return "; ".join(dict.fromkeys(m["refused"]))
    if quick:
        return "--quick"
    if m["collapsed"]:
        return f"collapsed ({'; '.join(m['collapsed'])})"
    return None


def judge(row, m, why_not=None, quick=False):
    """The row's verdict cells: {"figure": ..., "gain": ..., "judged": True / False / None (nothing to compare)}."""
    claim = published_gain(row)
    if row["not_compared"] or (row["published"] is None and claim is None):
        return {"figure": f"not compared: {row['not_compared'] or 'the paper text we have gives no figure'}",
                "gain": "—", "judged": None}
    why = not_judged(m, why_not, quick)
    if why:
        return {"figure": f"not judged: {why}", "gain": "—", "judged": False}
    cells = {"figure": "—", "gain": "—", "judged": True}
    for key, published_value, values, missing, kind, spread in (
            ("figure", row["published"], m["values"], m["missing"], "figure", row["spread"]),
            ("gain", claim, m["gains"], m["missing_gain"] or m["missing"], claim_kind(row), row["gain_spread"])):
        if published_value is None:
            continue
        if not values:
            cells[key], cells["judged"] = f"not judged: {missing}", False
            continue
        cells[key] = said(verdict(published_value, values, kind, spread, row["runs"], row["statistic"],
                                  row["spread_kind"] or "sample"))
    return cells


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
               "gain, ours | verdict, gain | ran | beside |"), "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = {}  # (what, sentence) -> its number, shown beside every row it concerns
    for i, row in enumerate(rows):
        m = measured.get(i) or {}
        marks = [notes.setdefault((key, row[key]), len(notes) + 1)
                 for key in ("provenance", "definition", "measured", "not_compared") if row[key]]
        label = row["row"] + (f" [{', '.join(map(str, marks))}]" if marks else "")
        pub = "not printed" if row["published"] is None else number(row["published"], row["spread"])
        pg = published_gain(row)
        gain_pub = "—" if pg is None else number(pg, row["gain_spread"], sign="+") + \
            ("%" if row["gain_kind"] == "relative" else "") + f" over {row['baseline']['method']}"
        ours = number(m.get("ours"), m.get("spread"), n=m.get("n"))
        gain = number(m.get("gain"), m.get("gain_spread"), "+", m.get("n_gain")) if row["baseline"] else "—"
        spec = run_spec(row)
        ran = f"{runs[spec].script} --arch {runs[spec].arch}" if spec in runs else "—"
        beside = ", ".join(f"our {h} {v:.2f}" for h, v in (m.get("beside") or {}).items()) or "—"
        lines.append(f"| {row['table']} | {label} | {what(row)} | {how_measured(row)} | {pub} | {ours} | "
                     f"{verdicts[i]['figure']} | {gain_pub} | {gain} | {verdicts[i]['gain']} | {ran} | {beside} |")
    lines += ["", (f"Verdict: ours - published = d ± h, h the half-width of its 90 % interval (Student's t; the "
                   f"standard errors of both sides, from each side's spread and runs; one run's std taken as "
                   f"{ONE_RUN_STD['figure']:g} where a side has none), against a tolerance of {TOLERANCE:.1f} points "
                   f"for a network's accuracy, and for a gain or an ablation's difference half the claimed one (at "
                   f"most {TOLERANCE:.1f}). reproduced: d ± h within it (from at least 2 runs and the paper's number); "
                   f"below / above: wholly beyond it; inconclusive: neither (with the runs that would tell). Ours "
                   f"is the paper's statistic (its epoch: the best where it reports the best, else the last; the "
                   f"median of the seeds where it reports a median, else the mean; its kind of std, else the sample "
                   f"std) of the figure it reports; gains are paired by seed. Not judged: skipped, failed, stale, "
                   f"collapsed or missing runs, --quick."), ""]
    kinds = {"provenance": "where the figure comes from", "definition": "what the figure is",
             "measured": "how the paper's statistic is known", "not_compared": "why it is not compared"}
    lines += [f"[{k}] {kinds[key]}: {text}." for (key, text), k in notes.items()]
    lines += ["", "Sources:"]
    for paper in dict.fromkeys(r["paper"] for r in rows):
        places = dict.fromkeys(f"Table {r['table']}: {r['place']}" for r in rows if r["paper"] == paper)
        lines.append(f"- {published.PAPERS[paper]}; {'; '.join(places)}.")
    return "\n".join(lines) + "\n"


NOT_JUDGED = {"skipped": "skipped for missing data", "a run failed": "with a failed run", "stale": "with a stale run",
              "collapsed": "with a collapsed run", "trained on": "trained on other data", "--quick": "under --quick"}


def exit_sentence(rows, verdicts, quick):
    """None when every row with a figure to compare was judged (--quick: when every run finished), else the one
    sentence: how many rows were not judged, and why (NOT_JUDGED's words; else a run or a head is missing)."""
    counted = [i for i in range(len(rows)) if verdicts[i]["judged"] is not None]
    reasons = {}
    for i in counted:
        why = next((c[len("not judged: "):] for c in (verdicts[i]["figure"], verdicts[i]["gain"])
                    if c.startswith("not judged: ")), None)
        if why is None or (quick and why == "--quick"):
            continue
        reason = next((words for start, words in NOT_JUDGED.items() if why.startswith(start)), "with a run missing")
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return None
    return f"{sum(reasons.values())} of {len(counted)} rows with a figure to compare were not judged (" + \
        ", ".join(f"{n} {why}" for why, n in reasons.items()) + "); the table says why for each"


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    compare.write_file(path, text)


def main(argv=None):
    opts, flags = parse(argv)
    if opts.judge is not None:
        print(judge_line(opts))
        return None
    name = opts.paper + (f"-{opts.table}" if opts.table else "")
    rows = opts.rows
    if opts.render:
        runs = plan(rows, opts, flags)
        done, refused = usable_runs(load_summaries(opts.render, runs), runs)
        measured = {i: measure(row, done, refused) for i, row in enumerate(rows)}
        verdicts = {i: judge(row, measured[i], quick=opts.quick) for i, row in enumerate(rows)}
        text = render(rows, measured, verdicts, runs, opts.quick)
        write(os.path.join(opts.render, f"{name}.md"), text)
    else:
        skipped = {i: s for i, row in enumerate(rows) if not opts.quick for s in [missing_data(opts, row)] if s}
        if len(skipped) == len(rows):
            compare.die(f"no row of {name} can run here: {'; '.join(dict.fromkeys(skipped.values()))}")
        for i, sentence in skipped.items():
            print(f"{rows[i]['table']} / {rows[i]['row']}: skipped: {sentence}", flush=True)
        to_run = [row for i, row in enumerate(rows) if i not in skipped]
        runs = plan(to_run, opts, flags)
        distinct = {id(r): r for r in runs.values()}.values()
        print(f"{len(distinct)} runs ({sum(len(r.seeds) for r in distinct)} trainings over their seeds) for "
              f"{len(to_run)} rows", flush=True)
        done, failed = train(runs, opts)
        done, refused = usable_runs(done, runs)
        measured, verdicts = {}, {}
        for i, row in enumerate(rows):
            measured[i] = measure(row, done, refused) if i not in skipped else {}
            why_not = "skipped (" + skipped[i] + ")" if i in skipped else \
                "a run failed (see its log.txt)" if {run_spec(row), baseline_spec(row)} & set(failed) else None
            verdicts[i] = judge(row, measured[i], why_not, opts.quick)
        text = render(rows, measured, verdicts, runs, opts.quick)
        write(os.path.join(opts.out_dir, f"{name}.md"), text)
        if opts.results:
            write(os.path.join(opts.results, f"{name}.md"), text)
    print("\n" + text)
    sentence = exit_sentence(rows, verdicts, opts.quick)
    if sentence:
        print(f"error: {sentence}", file=sys.stderr)
        sys.exit(1)
    return text


if __name__ == "__main__":
    compare.catch_interrupts()
    try:
        main()
    except compare.Interrupted as e:
        compare.interrupted(e)
