"""Run several methods with identical settings over several seeds and write one table.

    python scripts/compare.py --methods vanilla,dml,kdcl,ffl,ffcl,fefr,ffsd,mkb_cl,one --arch resnet20 \
        --students 2 --dataset folder --data-dir DIR --epochs 15 --seeds 0,1,2 --jobs 2 \
        --out-dir runs/compare --results results/my_comparison
    python scripts/compare.py --render results/my_comparison      # the table again, from the summaries alone
    python scripts/compare.py --render results/my_comparison --output table.md   # ... into a file

Every other flag is passed unchanged to every script (common flags such as --limit-train or --lr).
Per-method extras: `--extra ffsd=--students=3 --extra "kdcl=--ensemble naive"`.
Each run goes to OUT/<method>/seed<S>; a run with a results.json is re-used, one with only a last.pt is
resumed, so an interrupted comparison continues where it stopped; a run there trained with other flags than the
command plans is refused before anything trains, in one sentence naming them (it is kept: pass another --out-dir).
Ctrl-C or SIGTERM ends the runs in progress (their last.pt kept) and says so in one sentence (exit status 130 /
143); the same command continues them. `--jobs N` runs N at once, each on
cores/N threads unless OMP_NUM_THREADS says otherwise. FFCL's regularization knowledge needs pre-trained
peers: unless its extras say otherwise it takes the vanilla run of the same seed (the paper's baselines are
its pre-training), so that run comes first.

Writes OUT/table.md (one row per method: mean ± std over seeds of every head's final and best top-1, the
best and the mean deployed network and their gains over vanilla's, paired by seed, and the collapses), OUT/
summary.json, and OUT/accuracy.png (test accuracy per epoch) when matplotlib is installed. With --results DIR
it also writes each run's summary (results.json plus the per-epoch curve: lr, every loss part on the training
batches, every head's test top-1 and top share; a few KB, no weights) as DIR/<method>/seed<S>.json as soon as
the run has finished, and the table as DIR/table.md, so the table can be checked and re-rendered without the
runs: --render DIR prints it (--output PATH writes it there instead; never over a file git tracks).

The collapse column applies the current check (common.collapsed_heads: one class for at least (1 + 1/C)/2 of
the test images and top-1 at most twice chance) to every evaluation after the warm-up in each run's curve,
`head@epoch` for the first; a summary without top shares keeps the collapses its run recorded.
"""
import argparse
import importlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import METHODS, collapsed_heads, read_metrics  # noqa: E402  (the methods; the collapse check)
TIMING_KEYS = ("seconds", "images_per_s")  # left out of a run's summary curve (they vary between machines)


def die(message):
    """A usage error: one sentence on stderr, exit status 2 (as the method scripts do)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of scripts")
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--out-dir", default="runs/compare", help="where the runs and the table go")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores/jobs threads)")
    p.add_argument("--results", default=None, help="also write each run's small summary and the table here")
    p.add_argument("--render", default=None, metavar="DIR",
                   help="only print the table of DIR's run summaries (DIR/<method>/seed<S>.json)")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="with --render: write the table to PATH instead (never over a file git tracks)")
    p.add_argument("--extra", action="append", default=[], metavar="METHOD=FLAGS",
                   help="flags for one method only, e.g. ffsd=--students=3 (repeatable)")
    opts, common_flags = p.parse_known_args()
    opts.out_dir = os.path.abspath(opts.out_dir)
    opts.methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    unknown = [m for m in opts.methods if m not in METHODS]
    if unknown:
        die(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    try:
        opts.seeds = [int(s) for s in opts.seeds.split(",") if s.strip()]
    except ValueError:
        die(f"--seeds must be a comma list of integers, got '{opts.seeds}'")
    if opts.jobs < 1:
        die(f"--jobs must be at least 1, got {opts.jobs}")
    if opts.render and not os.path.isdir(opts.render):
        die(f"--render {opts.render} is not a folder of run summaries")
    if opts.output and not opts.render:
        die("--output is for --render (a comparison writes its table into --out-dir and --results)")
    if opts.output and tracked(opts.output):
        die(f"{opts.output} is a file git tracks; --render prints the table (or give --output another path), so "
            f"that a committed table changes only by hand")
    for flag in ("--seed", "--out-dir", "--resume"):
        if any(f == flag or f.startswith(flag + "=") for f in common_flags):
            die(f"{flag} is set by compare.py itself (use --seeds / --out-dir)")
    extras = {}
    for item in opts.extra:
        method, _, flags = item.partition("=")
        if method not in METHODS or not flags:
            die(f"--extra takes METHOD=FLAGS with METHOD one of {', '.join(METHODS)}, got '{item}'")
        extras.setdefault(method, []).extend(shlex.split(flags))
    opts.extras = extras
    opts.ffcl_needs_vanilla = "ffcl" in opts.methods and not any(
        f.startswith(("--pretrain", "--no-regularization")) for f in extras.get("ffcl", []))
    if opts.ffcl_needs_vanilla:
        opts.methods = ["vanilla"] + [m for m in opts.methods if m != "vanilla"]  # vanilla pre-trains FFCL
    return opts, common_flags


def run_dir(opts, method, seed):
    return os.path.join(opts.out_dir, method, f"seed{seed}")


def finished(opts, method, seed):
    return os.path.exists(os.path.join(run_dir(opts, method, seed), "results.json"))


def command(opts, common_flags, method, seed):
    out = run_dir(opts, method, seed)
    script = "common.py" if method == "vanilla" else f"{method}.py"
    cmd = [sys.executable, os.path.join(ROOT, script), *common_flags, *opts.extras.get(method, []),
           "--seed", str(seed), "--out-dir", out]
    if method == "ffcl" and opts.ffcl_needs_vanilla:
        pre = run_dir(opts, "vanilla", seed)
        students = [f for f in sorted(os.listdir(pre)) if f[0] == "s" and f[1:-3].isdigit() and f.endswith(".pt")]
        cmd += ["--pretrained", ",".join(os.path.join(pre, f) for f in students)]
    if os.path.exists(os.path.join(out, "last.pt")):
        cmd.append("--resume")
    return cmd


def save_summary(opts, method, seed):
    """With --results, the run's summary goes there as soon as the run has finished."""
    if opts.results:
        os.makedirs(os.path.join(opts.results, method), exist_ok=True)
        write_file(os.path.join(opts.results, method, f"seed{seed}.json"),
                   json.dumps(run_summary(opts, method, seed), indent=1))


def write_file(path, text):
    """Written whole or not at all: a temporary file beside it, then renamed over it (os.replace is atomic), so
    that an interrupt or a full disk never leaves a summary or a table cut mid-write."""
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_json(path):
    """A JSON file (a run summary, a run's results.json or args.json), or one sentence naming one that is not."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        die(f"{path} is not readable JSON ({e.__class__.__name__}: cut mid-write, or edited); delete it, and the "
            f"command that wrote it writes it again (a summary: from its run folder)")


# ================================================================================================
# A finished run is re-used only when it is the run the command plans: the same flags as recorded
# ================================================================================================

# what may differ between a run's recorded flags and the same run planned again: where things are (the paths:
# the same files), how it reports (--quiet, --tensorboard) and what this machine runs it with (--device, --amp,
# --compile, --workers); FFCL's --pretrained is the vanilla run of its folder, itself compared
MAY_DIFFER = ("out_dir", "resume", "data_dir", "pretrained", "quiet", "tensorboard", "device", "amp", "compile",
              "workers")
NOWHERE = os.path.join(os.devnull, "planned")  # an --out-dir that cannot exist: planning reads no run folder
PLANNED = {}  # (method, flags): planned_args' answer


def planned_args(method, flags):
    """The run's recorded flags, as results.json['args'] keeps them ({flag dest: value}), for `method` (a script
    of common.METHODS) run with `flags`: what common.py's parse_flags makes of them, its recipe's values included.
    No run folder is read (--out-dir and --resume are left out, and --device: this machine's)."""
    import common
    key = (method, tuple(flags))
    if key not in PLANNED:
        tokens, value_follows = [], False
        for t in flags:  # without --out-dir DIR, --device D and --resume
            name = t.split("=")[0]
            if value_follows:
                value_follows = False
            elif name in ("--out-dir", "--device"):
                value_follows = "=" not in t
            elif name != "--resume":
                tokens.append(t)
        module = None if method == "vanilla" else importlib.import_module(method)
        args, _ = common.parse_flags(method, module and module.add_arguments,
                                     tokens + ["--out-dir", NOWHERE, "--device", "cpu"])
        PLANNED[key] = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    return PLANNED[key]


def differing_flags(recorded, planned):
    """The flags where a run's record and the plan differ (those both hold, but MAY_DIFFER): [(flag, recorded
    value, planned value)]."""
    return [(f"--{k.replace('_', '-')}", recorded[k], v) for k, v in planned.items()
            if k in recorded and k not in MAY_DIFFER and recorded[k] != v]


def said_flags(differ, most=4):
    """'--wd 0.0001 where this command plans --wd 0.0005, ...': the first `most` of differing_flags()."""
    shown = [f"{flag} {old} where this command plans {flag} {new}" for flag, old, new in differ[:most]]
    return ", ".join(shown) + (f" (and {len(differ) - most} more)" if len(differ) > most else "")


def recorded_args(out):
    """The flags a run folder's run was trained with (results.json's, else args.json's), or None without either."""
    for name in ("results.json", "args.json"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            record = read_json(path)
            return record.get("args", {}) if name == "results.json" else record
    return None


def stale_runs(opts, common_flags):
    """Sentences, one per run folder holding a run (finished, or with a last.pt to resume) whose recorded flags
    differ from what this command plans for it."""
    found = []
    for seed in opts.seeds:
        for method in opts.methods:
            out = run_dir(opts, method, seed)
            if not any(os.path.exists(os.path.join(out, f)) for f in ("results.json", "last.pt")):
                continue
            recorded = recorded_args(out)
            planned = planned_args(method, [*common_flags, *opts.extras.get(method, []), "--seed", str(seed)])
            differ = differing_flags(recorded or {}, planned)
            if differ:
                found.append(f"{out} holds a run trained with {said_flags(differ)}")
    return found


def refuse_stale_runs(opts, common_flags):
    """One sentence and exit status 2 when a run folder holds a run of other flags: nothing trains, nothing is
    overwritten."""
    stale = stale_runs(opts, common_flags)
    if stale:
        die(f"{stale[0]}{f' (and {len(stale) - 1} more run(s) of other flags)' if len(stale) > 1 else ''}; it is "
            f"kept: pass another --out-dir to train this command's runs, or give the flags it was trained with")


# ================================================================================================
# Ctrl-C and SIGTERM: the runs in progress are ended (their last.pt kept), then one sentence
# ================================================================================================

class Interrupted(Exception):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum, self.ended = signum, []


def on_signal(signum, frame):
    raise Interrupted(signum)


def catch_interrupts():
    """From here SIGINT and SIGTERM raise Interrupted (one left ignored by the caller stays ignored)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, on_signal)


def end_runs(running, signum):
    """Send each run in progress the signal received (each leads its own process group: its workers get it too),
    then wait for it to save what it can and stop; a run still there after a minute is killed. Returns their
    names."""
    for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut this short
        signal.signal(s, signal.SIG_IGN)
    for proc, _ in running.values():
        if proc.poll() is None:
            os.killpg(proc.pid, signum)
    for proc, log in running.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return [f"{method} seed {seed}" for method, seed in running]


def interrupted(error):
    """The one sentence, and exit status 128 + the signal."""
    ended = f"ended {len(error.ended)} run(s) in progress ({', '.join(error.ended)}), their last.pt kept" \
        if error.ended else "no run was in progress"
    print(f"interrupted ({signal.Signals(error.signum).name}): {ended}; the same command continues the comparison "
          f"(finished runs are re-used)", file=sys.stderr)
    sys.exit(128 + error.signum)


def run_all(opts, common_flags):
    """Every (method, seed) not finished yet, up to --jobs at once; FFCL waits for its vanilla run.
    Returns the runs that failed. A run folder holding a run of other flags stops it before anything trains
    (refuse_stale_runs); Ctrl-C or SIGTERM ends the runs in progress (end_runs) and raises Interrupted."""
    refuse_stale_runs(opts, common_flags)
    todo, running, failed = [], {}, []
    for seed in opts.seeds:
        for method in opts.methods:
            if finished(opts, method, seed):
                print(f"{method} seed {seed}: finished earlier, re-using {run_dir(opts, method, seed)}", flush=True)
                save_summary(opts, method, seed)
            else:
                todo.append((method, seed))
    env = dict(os.environ)  # an OMP_NUM_THREADS already set wins; otherwise the cores are shared out
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // opts.jobs)))
    try:
        run_queue(opts, common_flags, todo, running, failed, env)
    except Interrupted as e:
        e.ended = end_runs(running, e.signum)
        raise
    return failed


def run_queue(opts, common_flags, todo, running, failed, env):
    """run_all's loop: start runs up to --jobs, each in a process group of its own (a Ctrl-C at the terminal
    reaches this process alone, which ends them: end_runs), and collect them as they end."""
    while todo or running:
        for run in list(todo):
            if len(running) >= opts.jobs:
                break
            method, seed = run
            if method == "ffcl" and opts.ffcl_needs_vanilla and not finished(opts, "vanilla", seed):
                if ("vanilla", seed) in failed:
                    todo.remove(run)
                    failed.append(run)
                continue
            todo.remove(run)
            out = run_dir(opts, method, seed)
            os.makedirs(out, exist_ok=True)
            cmd = command(opts, common_flags, method, seed)
            print(f"{method} seed {seed}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
            log = open(os.path.join(out, "log.txt"), "a")
            running[run] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             start_new_session=True), log)
        time.sleep(0.2)
        for run, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[run]
            if proc.returncode != 0:
                with open(os.path.join(run_dir(opts, *run), "log.txt")) as f:
                    tail = f.read().strip().splitlines()[-1:]
                print(f"{run[0]} seed {run[1]}: FAILED (exit {proc.returncode}): {tail[0] if tail else ''}", flush=True)
                failed.append(run)
            else:
                print(f"{run[0]} seed {run[1]}: done", flush=True)
                save_summary(opts, *run)


def run_summary(opts, method, seed):
    """results.json of a finished run plus its per-epoch curve (metrics.jsonl less timings): small enough to commit."""
    out = run_dir(opts, method, seed)
    with open(os.path.join(out, "results.json")) as f:
        summary = json.load(f)
    records = read_metrics(os.path.join(out, "metrics.jsonl"))  # an epoch's last line; a cut one skipped
    summary["seed"] = seed
    summary["curve"] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
    return summary


def mean_std(values):
    """(mean, std) over seeds; the std is None for a single seed (no spread was measured)."""
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def fmt(ms, sign=""):
    if ms is None:
        return "—"
    return f"{ms[0]:{sign}.2f}" + ("" if ms[1] is None else f" ± {ms[1]:.2f}")


def deployed(run):
    """Final top-1 of the networks a run deploys, one each: FFSD's leader alone, else every student s<i> (never
    `any`, the any-correct bound, nor `ens`)."""
    final = run["final"]
    return [final["leader"]] if "leader" in final else [v for h, v in final.items() if h[0] == "s" and h[1:].isdigit()]


def best_student(run):
    return max(deployed(run))


def mean_student(run):
    return statistics.mean(deployed(run))


def paired_gain(runs, vanilla, of):
    """Mean ± std over seeds of of(run) - of(vanilla's run of the same seed)."""
    return mean_std([of(r) - of(vanilla[r["seed"]]) for r in runs if r["seed"] in vanilla])


CLASSES = {"cifar10": 10, "cifar100": 100, "cinic10": 10, "mnist": 10, "stl10": 10, "synthetic": 10}


def collapses(run):
    """{head: the first epoch} where the current collapse check fires on the run's curve after its warm-up (as
    common.py checks a run); the run's own record where the curve has no top shares or the class count is
    unknown."""
    curve, args = run.get("curve") or [], run.get("args", {})
    classes = run.get("num_classes") or CLASSES.get(args.get("dataset"))
    if not classes or not curve or not any(k.startswith("top_share_") for k in curve[0]):
        return run.get("collapsed", {})
    warmup = args.get("warmup_epochs", args.get("lr_warmup", 0))
    found = {}
    for record in curve:
        if record["epoch"] - 1 < warmup:  # epoch e (from 0) is checked once e >= the warm-up
            continue
        shares = {k[len("top_share_"):]: v for k, v in record.items() if k.startswith("top_share_")}
        for head in collapsed_heads({h: record[f"top1_{h}"] for h in shares}, shares, classes):
            found.setdefault(head, record["epoch"])
    return found


def tracked(path):
    """Whether git tracks the file at `path` (False where git or a repository is not there)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return subprocess.run(["git", "-C", folder, "ls-files", "--error-unmatch", os.path.basename(path)],
                              capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def summarise(runs_by_method):
    """{method: [run summaries]} -> {method: mean ± std of every head, the best and the mean deployed network
    and their gains over vanilla's}."""
    vanilla = {r["seed"]: r for r in runs_by_method.get("vanilla", [])}
    summary = {}
    for method, runs in runs_by_method.items():
        if not runs:
            continue
        heads = list(runs[0]["final"])
        summary[method] = {
            "seeds": [r["seed"] for r in runs],
            "final": {h: mean_std([r["final"][h] for r in runs]) for h in heads},
            "best": {h: mean_std([r["best"][h] for r in runs]) for h in heads},
            "best_student_final": mean_std([best_student(r) for r in runs]),
            "gain_over_vanilla": paired_gain(runs, vanilla, best_student),
            "mean_student_final": mean_std([mean_student(r) for r in runs]),
            "mean_gain_over_vanilla": paired_gain(runs, vanilla, mean_student),
            "collapsed": sorted({f"{h}@{e}" for r in runs for h, e in collapses(r).items()}),
            "params_student": runs[0]["params"].get("s0") or runs[0]["params"].get("s1"),
            "params_total": runs[0]["params"]["total"],
            "hours": sum(r["train_seconds"] for r in runs) / 3600,
            "epochs": runs[0]["epochs"], "device": runs[0]["device"], "args": runs[0]["args"],
        }
        if all("final_top5" in r for r in runs):  # logged for data sets of 100 classes or more
            summary[method]["final_top5"] = {h: mean_std([r["final_top5"][h] for r in runs]) for h in heads}
    return summary


def table(summary):
    top5 = any("final_top5" in s for s in summary.values())  # a column of its own where any run logged it
    lines = ["| method | seeds | final top-1 per head (mean ± std) | " + ("final top-5 per head | " if top5 else "") +
             "best-epoch top-1 per head | best student "
             "(final) | vs vanilla (paired by seed) | mean student (final) | vs vanilla | collapses | "
             "params: student / all (M) | train h |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if top5 else "")]
    for method, s in summary.items():
        final = ", ".join(f"{h} {fmt(v)}" for h, v in s["final"].items())
        if top5:
            final += " | " + (", ".join(f"{h} {fmt(v)}" for h, v in s.get("final_top5", {}).items()) or "—")
        best = ", ".join(f"{h} {fmt(v)}" for h, v in s["best"].items())
        gain = fmt(s["gain_over_vanilla"], "+")
        params = f"{s['params_student'] / 1e6:.2f} / {s['params_total'] / 1e6:.2f}" if s["params_student"] else \
            f"— / {s['params_total'] / 1e6:.2f}"
        lines.append(f"| {method} | {len(s['seeds'])} | {final} | {best} | {fmt(s['best_student_final'])} | {gain} | "
                     f"{fmt(s['mean_student_final'])} | {fmt(s['mean_gain_over_vanilla'], '+')} | "
                     f"{', '.join(s['collapsed']) or 'none'} | {params} | {s['hours']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(path, runs_by_method):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, runs in runs_by_method.items():
        if not runs:
            continue
        curve = runs[0]["curve"]
        key = "top1_leader" if "top1_leader" in curve[0] else "top1_ens"
        ax.plot([r["epoch"] for r in curve], [r[key] for r in curve], label=f"{method} ({key[5:]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"seed {runs_by_method[next(iter(runs_by_method))][0]['seed']}")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_table(folder, header, runs_by_method):
    summary = summarise(runs_by_method)
    text = table(summary)
    write_file(os.path.join(folder, "table.md"), header + "\n\n" + text)
    write_file(os.path.join(folder, "summary.json"), json.dumps(summary, indent=2))
    return text, summary


def render(folder, output=None):
    """The table again from DIR/<method>/seed<S>.json alone (no runs, no training): printed, or written to
    `output`."""
    runs_by_method = {}
    for method in METHODS:
        sub = os.path.join(folder, method)
        if os.path.isdir(sub):
            runs_by_method[method] = sorted((read_json(os.path.join(sub, f)) for f in os.listdir(sub)
                                             if f.startswith("seed") and f.endswith(".json")), key=lambda r: r["seed"])
    if not any(runs_by_method.values()):
        die(f"{folder} holds no run summaries (<method>/seed<S>.json)")
    first = next(r for runs in runs_by_method.values() for r in runs)
    text = f"Command of the first run: `{first['command']}`\n\n" + table(summarise(runs_by_method))
    if output is None:
        print(text, end="")
        return
    write_file(output, text)
    print(f"wrote {output}")


def main():
    opts, common_flags = parse()
    if opts.render:
        return render(opts.render, opts.output)
    os.makedirs(opts.out_dir, exist_ok=True)
    failed = run_all(opts, common_flags)
    runs_by_method = {m: [run_summary(opts, m, s) for s in opts.seeds if finished(opts, m, s)] for m in opts.methods}
    header = f"Flags: `{' '.join(common_flags)}`; seeds {opts.seeds}; extras {opts.extras or 'none'}"
    text, _ = write_table(opts.out_dir, header, runs_by_method)
    if opts.results:
        write_table(opts.results, header, runs_by_method)
    plot_path = (plot(os.path.join(opts.out_dir, "accuracy.png"), runs_by_method) if any(runs_by_method.values())
                 else None)
    print("\n" + text + (f"\nplot: {plot_path}" if plot_path else ""))
    if failed:
        die(f"{len(failed)} run(s) failed: {', '.join(f'{m} seed {s}' for m, s in failed)} (see their log.txt)")


if __name__ == "__main__":
    catch_interrupts()
    try:
        main()
    except Interrupted as e:
        interrupted(e)
