"""Run several methods with identical settings over several seeds and write one table.

    python scripts/compare.py --methods vanilla,dml,kdcl,ffl,ffcl,fefr,ffsd,mkb_cl --arch resnet20 \
        --students 2 --dataset folder --data-dir DIR --epochs 15 --seeds 0,1 --out-dir runs/compare

Every other flag is passed unchanged to every script (common flags such as --limit-train or --lr).
Per-method extras: `--extra ffsd=--students=3 --extra "kdcl=--ensemble naive"`.
Each run goes to OUT/<method>/seed<S>; a run with a results.json is re-used, one with only a last.pt is
resumed, so an interrupted comparison continues where it stopped. FFCL's regularization knowledge needs
pre-trained peers: unless its extras say otherwise it takes the vanilla run of the same seed (the paper's
baselines are its pre-training), so vanilla is run first.

Writes OUT/table.md (one row per method: mean ± std over seeds of every head's final and best top-1, the
best student's gain over vanilla, parameters, images/s), OUT/summary.json, and OUT/accuracy.png (test
accuracy per epoch per method) when matplotlib is installed.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["vanilla", "dml", "kdcl", "ffl", "ffcl", "fefr", "ffsd", "mkb_cl"]
STUDENT_HEADS = ("s", "leader")  # heads that are one deployable network


def die(message):
    """A usage error: one sentence on stderr, exit status 2 (as the method scripts do)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of scripts")
    p.add_argument("--seeds", default="0", help="comma list of seeds")
    p.add_argument("--out-dir", default="runs/compare", help="where the runs and the table go")
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
    if "ffcl" in opts.methods and not any(f.startswith(("--pretrain", "--no-regularization"))
                                          for f in extras.get("ffcl", [])):
        opts.methods = ["vanilla"] + [m for m in opts.methods if m != "vanilla"]  # vanilla pre-trains FFCL
    return opts, common_flags


def run_dir(opts, method, seed):
    return os.path.join(opts.out_dir, method, f"seed{seed}")


def run_one(opts, common_flags, method, seed):
    out = run_dir(opts, method, seed)
    if os.path.exists(os.path.join(out, "results.json")):
        print(f"{method} seed {seed}: finished earlier, re-using {out}", flush=True)
        return True
    script = "common.py" if method == "vanilla" else f"{method}.py"
    cmd = [sys.executable, os.path.join(ROOT, script), *common_flags, *opts.extras.get(method, []),
           "--seed", str(seed), "--out-dir", out]
    if method == "ffcl" and "ffcl" not in opts.extras:
        pre = run_dir(opts, "vanilla", seed)
        students = [f for f in sorted(os.listdir(pre)) if f[0] == "s" and f[1:-3].isdigit() and f.endswith(".pt")]
        cmd += ["--pretrained", ",".join(os.path.join(pre, f) for f in students)]
    if os.path.exists(os.path.join(out, "last.pt")):
        cmd.append("--resume")
    os.makedirs(out, exist_ok=True)
    print(f"{method} seed {seed}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
    with open(os.path.join(out, "log.txt"), "a") as log:
        status = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        with open(os.path.join(out, "log.txt")) as f:
            tail = f.read().strip().splitlines()[-1:]
        print(f"{method} seed {seed}: FAILED (exit {status}): {tail[0] if tail else ''}", flush=True)
        return False
    return True


def mean_std(values):
    if not values:
        return None
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return m, s


def fmt(ms):
    return "—" if ms is None else f"{ms[0]:.2f} ± {ms[1]:.2f}"


def summarise(opts):
    summary = {}
    for method in opts.methods:
        runs = []
        for seed in opts.seeds:
            path = os.path.join(run_dir(opts, method, seed), "results.json")
            if os.path.exists(path):
                with open(path) as f:
                    runs.append(json.load(f))
        if not runs:
            continue
        heads = list(runs[0]["final"])
        best_student = [max(v for h, v in r["final"].items() if h.startswith(STUDENT_HEADS)) for r in runs]
        summary[method] = {
            "seeds": len(runs),
            "final": {h: mean_std([r["final"][h] for r in runs]) for h in heads},
            "best": {h: mean_std([r["best"][h] for r in runs]) for h in heads},
            "best_student_final": mean_std(best_student),
            "params_student": runs[0]["params"].get("s0") or runs[0]["params"].get("s1"),
            "params_total": runs[0]["params"]["total"],
            "images_per_s": statistics.mean(r["images_per_s"] for r in runs),
            "epochs": runs[0]["epochs"], "device": runs[0]["device"], "args": runs[0]["args"],
        }
    return summary


def table(summary):
    vanilla = summary.get("vanilla", {}).get("best_student_final")
    lines = ["| method | seeds | final top-1 per head (mean ± std) | best-epoch top-1 per head | best student "
             "(final) | vs vanilla | params: student / all (M) | train img/s |",
             "|---|---|---|---|---|---|---|---|"]
    for method, s in summary.items():
        final = ", ".join(f"{h} {fmt(v)}" for h, v in s["final"].items())
        best = ", ".join(f"{h} {fmt(v)}" for h, v in s["best"].items())
        gain = "—" if vanilla is None else f"{s['best_student_final'][0] - vanilla[0]:+.2f}"
        params = f"{s['params_student'] / 1e6:.2f} / {s['params_total'] / 1e6:.2f}" if s["params_student"] else \
            f"— / {s['params_total'] / 1e6:.2f}"
        lines.append(f"| {method} | {s['seeds']} | {final} | {best} | {fmt(s['best_student_final'])} | {gain} | "
                     f"{params} | {s['images_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(opts, summary):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for method in summary:
        with open(os.path.join(run_dir(opts, method, opts.seeds[0]), "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        key = "top1_leader" if "top1_leader" in records[0] else "top1_ens"
        ax.plot([r["epoch"] for r in records], [r[key] for r in records], label=f"{method} ({key[5:]})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"seed {opts.seeds[0]}")
    ax.legend()
    path = os.path.join(opts.out_dir, "accuracy.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def main():
    opts, common_flags = parse()
    os.makedirs(opts.out_dir, exist_ok=True)
    failed = [(m, s) for s in opts.seeds for m in opts.methods if not run_one(opts, common_flags, m, s)]
    summary = summarise(opts)
    text = table(summary)
    with open(os.path.join(opts.out_dir, "table.md"), "w") as f:
        f.write(f"Flags: `{' '.join(common_flags)}`; seeds {opts.seeds}; extras {opts.extras or 'none'}\n\n" + text)
    with open(os.path.join(opts.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot_path = plot(opts, summary) if summary else None
    print("\n" + text + (f"\nplot: {plot_path}" if plot_path else ""))
    if failed:
        die(f"{len(failed)} run(s) failed: {', '.join(f'{m} seed {s}' for m, s in failed)} (see their log.txt)")


if __name__ == "__main__":
    main()
