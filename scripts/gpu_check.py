"""One command that checks and measures the GPU path; writes OUT/gpu_check.json and a readable OUT/gpu_check.md.

Every part runs this project's own scripts as subprocesses, as a user runs them, each part within its time
budget; a part that fails records its error and the check goes on to the next (a part whose runs worked but
did not all fit in its budget is `partial`, and says what it left out). Both reports are rewritten
after every part, so a run that is cut short still reports every part it finished. The parts, in the order
they run (the most important first; part d takes what is left of the budget):

    a  environment      torch, torchvision, CUDA, cuDNN, NCCL, GPU name and memory, cores
    b  every method     vanilla and the eight methods, one short epoch each on synthetic data, with the GPU
                        defaults (bf16 autocast, channels_last) and with --amp off: exit status, finite
                        losses, peak memory
    c  speed            scripts/bench_speed.py: vanilla against bare compute and the conventional DataLoader
                        pipeline (one worker per core), every method, then again with --compile
    e  torchrun         torchrun --nproc_per_node=1 with --sync-bn, killed after its first epoch and resumed;
                        then NCCL itself (a one-rank group: all_reduce, DDP, SyncBatchNorm, bf16)
    f  streamed data    scripts/bench_data.py with one worker per core on generated 500 x 375 JPEGs at 224 px
    d  accuracy         the full real CIFAR-10 (50,000 / 10,000 JPEGs): vanilla, DML and FFL on resnet20 pairs,
                        same seed, run side by side for as many epochs as the epoch time measured first allows

On any GPU machine, from the repository root; only torch, torchvision and numpy are needed. Part d needs the
JPEG copy of CIFAR-10 inside the checkout (data/ is ignored by git; 20 MB), made by scripts/cifar10_jpeg.py
from torchvision's CIFAR-10 download:

    python scripts/cifar10_jpeg.py --out data/cifar10-jpeg.tar.gz
    python scripts/gpu_check.py --data-dir data/cifar10-jpeg.tar.gz --out OUT      # 8 minutes on one H100/H200

Where a machine receives the checkout but not its ignored files, send data/cifar10-jpeg.tar.gz along by
name, and allow the command 9 minutes (the check's 8 and its start). --data-dir takes the tarball (extracted
into a temporary folder, removed at the end) or a folder holding train/<class>/*.jpg and test/<class>/*.jpg;
without it the check takes the environment variable CIFAR10_JPEG (as the tests do), else data/cifar10-jpeg.tar.gz.
Exit status: 0 when no part failed, 1 when one did, 124 when the check was stopped (SIGTERM, Ctrl-C). On CPU
only the parts that need CUDA (e; --compile in c; --amp off in b) are skipped, each with its reason:

    python scripts/gpu_check.py --quick --device cpu --out runs/gc     # tiny sizes, under a minute on 2 cores
    python scripts/gpu_check.py --parts c,d --part-budget c=300,d=400 --out OUT2   # parts again, more time
"""
import argparse
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import METHODS, read_json, read_metrics as common_read_metrics  # noqa: E402  (torch, numpy)
SCRIPT = {m: "common.py" if m == "vanilla" else f"{m}.py" for m in METHODS}
EXTRA = {"ffcl": ["--pretrain-epochs", "1"], "ffsd": ["--students", "3"]}  # FFCL's peers, FFSD's third network
ORDER = ["a", "b", "c", "e", "f", "d"]
TITLES = {"a": "environment", "b": "every method, one short epoch (synthetic data)",
          "c": "speed (scripts/bench_speed.py)", "d": "accuracy on the full CIFAR-10 (vanilla, DML, FFL)",
          "e": "torchrun, one process, --sync-bn, killed and resumed; NCCL",
          "f": "streamed data (scripts/bench_data.py)"}
BUDGETS = {"a": 15, "b": 70, "c": 150, "e": 50, "f": 35, "d": 155}  # seconds, 475 of 480
QUICK_BUDGETS = {"a": 60, "b": 240, "c": 120, "e": 60, "f": 90, "d": 180}  # guards only: < 1 min on 2 cores
TAR_NAME = "cifar10-jpeg.tar.gz"

# Runs a method script as `python SCRIPT ARGS` does and, at exit, writes the CUDA allocator's peak to $GPU_CHECK_PEAK.
PEAK_WRAPPER = """
import atexit, json, os, runpy, sys
def peak():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        with open(os.environ["GPU_CHECK_PEAK"], "w") as f:
            json.dump({"allocated": torch.cuda.max_memory_allocated() / 2**20,
                       "reserved": torch.cuda.max_memory_reserved() / 2**20}, f)
atexit.register(peak)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""

ENVIRONMENT = """
import importlib.metadata, json, os, platform, shutil, subprocess, sys
import torch
info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "cc": shutil.which("cc") or shutil.which("gcc")}
for name in ("torchvision", "numpy", "triton", "pillow"):  # installed versions (the later parts import them)
    try:
        info[name] = importlib.metadata.version(name)
    except Exception as e:
        info[name] = f"not installed ({type(e).__name__})"
if torch.cuda.is_available():
    info["gpus"] = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                             "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
    info["bf16"] = torch.cuda.is_bf16_supported()
    try:
        v = torch.cuda.nccl.version()
        info["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception as e:
        info["nccl"] = f"unavailable ({type(e).__name__})"
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        info["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
print("GPU_CHECK " + json.dumps(info))
"""

# NCCL on this machine, under torchrun: a one-rank group, all_reduce, DDP over a SyncBatchNorm net, bf16 steps.
NCCL_PROBE = """
import json, os, torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F
local = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local)
dist.init_process_group("nccl")
device = torch.device("cuda", local)
t = torch.full((4,), float(dist.get_rank() + 1), device=device)
dist.all_reduce(t)
net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(16, 10))
net = nn.SyncBatchNorm.convert_sync_batchnorm(net).to(device, memory_format=torch.channels_last)
ddp = nn.parallel.DistributedDataParallel(net, device_ids=[local])
opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
losses = []
for step in range(5):
    x = torch.randn(32, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(ddp(x), torch.randint(10, (32,), device=device))
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
print("GPU_CHECK " + json.dumps({"backend": dist.get_backend(), "world_size": dist.get_world_size(),
      "all_reduce": t.tolist(), "losses": losses, "sync_bn_layers": sum(isinstance(m, nn.SyncBatchNorm)
      for m in net.modules())}))
dist.destroy_process_group()
"""


class Skip(Exception):
    """A part (or a run inside one) that cannot run here: recorded as skipped, with this reason."""


# ==================================================================================================
# Subprocesses: each in its own process group with its output in a log file, killed whole at its deadline
# ==================================================================================================

class Job:
    def __init__(self, cmd, log_path, env=None, marks=None):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.cmd, self.log_path = cmd, log_path
        self.patterns = marks or {}  # name: regex of a log line
        self.marks = {name: None for name in self.patterns}  # name: seconds after the start when it first showed
        self.log = open(log_path, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                     start_new_session=True)
        self.seconds = self.timed_out = None
        self.read_to = 0
        LIVE.add(self)

    def poll(self):
        """Exit status or None; records the marks seen in the log so far (all of them once it has ended)."""
        status = self.proc.poll()
        if any(v is None for v in self.marks.values()):
            now = time.monotonic() - self.t0
            with open(self.log_path, "rb") as f:
                f.seek(self.read_to)
                data = f.read()
            data = data[:data.rfind(b"\n") + 1]  # whole lines only
            self.read_to += len(data)
            for line in data.decode(errors="replace").splitlines():
                for name, pattern in self.patterns.items():
                    if self.marks[name] is None and re.search(pattern, line):
                        self.marks[name] = now
        if status is not None and self.seconds is None:
            self.seconds = time.monotonic() - self.t0
            self.log.close()
            LIVE.discard(self)
        return status

    def kill(self):
        """SIGKILL to the whole tree: its process group and every descendant (torchrun starts its workers in
        sessions of their own, so killing the launcher's group alone would leave them training)."""
        if self.proc.poll() is None:
            for pid in [self.proc.pid, *descendants(self.proc.pid)]:
                try:
                    os.killpg(pid, signal.SIGKILL) if pid == self.proc.pid else os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.proc.wait()
        self.poll()

    def output(self, chars=100000):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-chars:]

    def error(self):
        """The run's failure in one line: its last `error` line, else the last line of its output."""
        lines = [ln.strip() for ln in self.output().splitlines() if ln.strip()]
        said = [ln for ln in lines if ln.startswith("error")]  # this project's one sentence
        raised = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception)(:|$)", ln) and "ChildFailedError" not in ln]
        how = "killed at its time budget" if self.timed_out else f"exit {self.proc.returncode}"
        return f"{how}: {(said or raised or lines or ['no output'])[-1][:300]}"


LIVE = set()  # jobs still running: killed when the check itself is stopped


def descendants(pid):
    """Every process below pid (children, theirs, ...), from /proc (Linux)."""
    children = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_all(jobs, deadline, on_poll=None, limit=None):
    """Wait for the jobs until the deadline (monotonic seconds); those still running then are killed.
    `limit` starts them a few at a time: jobs is then a list of zero-argument functions that start one."""
    pending, running, done = (list(jobs), [], []) if limit else ([], list(jobs), [])
    while pending or running:
        while pending and len(running) < limit:
            running.append(pending.pop(0)())
        for job in list(running):
            if on_poll is not None:
                on_poll(job)
            if job.poll() is not None:
                running.remove(job)
                done.append(job)
        if time.monotonic() > deadline:
            for job in running:
                job.timed_out = True
                job.kill()
            done += running
            running = []
            break
        time.sleep(0.1)
    return done, len(pending)


def python(*argv):
    return [sys.executable, *argv]


def read_metrics(out_dir):
    try:
        return common_read_metrics(os.path.join(out_dir, "metrics.jsonl"))
    except OSError:
        return []


def finite(records):
    return all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))


# ==================================================================================================
# The parts
# ==================================================================================================

def part_a(c, budget):
    """Versions and hardware, from a fresh interpreter (this process never touches CUDA)."""
    done, _ = wait_all([Job(python("-c", ENVIRONMENT), c.log("a", "environment"))], time.monotonic() + budget)
    job = done[0]
    line = next((ln for ln in job.output().splitlines() if ln.startswith("GPU_CHECK ")), None)
    if job.proc.returncode != 0 or line is None:
        raise RuntimeError(f"the environment probe failed ({job.error()})")
    info = json.loads(line[len("GPU_CHECK "):])
    c.cuda = info["cuda_available"] and c.args.device != "cpu"
    c.cores = info["cores_usable"] or 1
    if c.args.device == "cuda" and not info["cuda_available"]:
        info["note"] = "--device cuda was asked for, but torch sees no CUDA device: the CUDA parts are skipped"
    return info


def part_b(c, budget):
    """Every method for one short epoch, with the defaults (bf16 + channels_last on CUDA) and with --amp off."""
    size = ["--limit-train", "128", "--limit-test", "64", "--batch-size", "64"] if c.args.quick else \
        ["--limit-train", "2048", "--limit-test", "1000", "--batch-size", "128"]
    variants = {"defaults": ("default", [])}
    if c.cuda:
        variants["--amp off"] = ("amp_off", ["--amp", "off"])
    jobs, starters = {}, []

    def start(m, variant):
        tag, flags = variants[variant]
        out = c.work(f"b_{m}_{tag}")
        argv = ["--dataset", "synthetic", "--arch", "resnet20", "--epochs", "1", *size, "--device", c.device,
                "--out-dir", out, *EXTRA.get(m, []), *flags]
        if m == "kdcl" and c.args.quick:  # its default hold-out, 50 images a class, is more than 128 images
            argv += ["--holdout-per-class", "2"]
        jobs[m, variant] = Job(python("-c", PEAK_WRAPPER, SCRIPT[m], *argv), c.log("b", f"{m}_{tag}"),
                               env={"GPU_CHECK_PEAK": out + ".peak.json", **c.threads})
        jobs[m, variant].out = out
        return jobs[m, variant]

    for variant in variants:
        starters += [lambda m=m, v=variant: start(m, v) for m in METHODS]
    wait_all(starters, time.monotonic() + budget, limit=4 if c.cuda else 2)
    rows, failed, partial = [], [], []
    for (m, variant), job in jobs.items():
        metrics, results = read_metrics(job.out), read_json(os.path.join(job.out, "results.json"))
        ok = job.proc.returncode == 0 and results is not None and bool(metrics) and finite(metrics)
        peak = read_json(job.out + ".peak.json") or {}
        rows.append({"method": m, "variant": variant, "status": "ok" if ok else "failed", "exit": job.proc.returncode,
                     "seconds": round(job.seconds, 1), "loss": metrics[-1]["loss"] if metrics else None,
                     "finite": finite(metrics) if metrics else None, "top1": results["final"] if results else None,
                     "images_per_s": round(metrics[-1]["images_per_s"]) if metrics else None,
                     "peak_mib": round(peak["allocated"]) if peak else None, "error": None if ok else job.error()})
        if not ok:
            failed.append(f"{m} ({variant}): {rows[-1]['error']}")
    not_started = [f"{m} ({v})" for v in variants for m in METHODS if (m, v) not in jobs]
    if not_started:
        partial.append(f"not started within the budget: {', '.join(not_started)}")
    skipped = {} if c.cuda else {"--amp off": "on CPU the defaults already are fp32 without channels_last"}
    return {"runs": rows, "skipped_variants": skipped}, failed, partial


BENCH_ROWS = ["bare_compute", "conventional", *METHODS]


def part_c(c, budget):
    """bench_speed.py eagerly, then with --compile (CUDA only), in what the budget leaves for it."""
    deadline, details, failed, partial = time.monotonic() + budget, {}, [], []
    sizes = ["--quick", "--steps", "1", "--rounds", "1", "--warmup", "1", "--batch-size", "16"] if c.args.quick \
        else ["--steps", "30", "--rounds", "3", "--warmup", "5"]
    runs = {"eager": []}
    if c.cuda:
        runs["compile"] = ["--compile", "--rounds", "2", "--warmup", "3"]  # torch.compile's default mode
    else:
        details["compile"] = {"status": "skipped", "reason": "--compile is measured on CUDA only (on a CPU its "
                              "compilation alone takes minutes)"}
    for label, flags in runs.items():
        left = deadline - time.monotonic()
        if left < 5:
            details[label] = {"status": "not reached", "reason": "part c's budget was spent"}
            partial.append(f"{label}: not reached within the budget")
            continue
        out = c.work(f"c_{label}") + ".json"
        # eagerly: what it needs (about 40 % of the budget at most); compiled: what is left
        end = min(deadline, time.monotonic() + max(0.4 * left, 20)) if label == "eager" and c.cuda else deadline
        job = Job(python("scripts/bench_speed.py", *sizes, *flags, "--device", c.device, "--workers",
                         str(1 if c.args.quick else c.cores), "--out", out), c.log("c", label), env=c.threads,
                  marks={r: rf"^\s+{r}\s+\d+ student-img/s$" for r in BENCH_ROWS})
        wait_all([job], end)
        figures = read_json(out)
        if figures:
            rows = {k: v for k, v in figures.items() if k != "meta"}
        else:  # cut short: the rows it printed before it ended
            rows = {m.group(1): {"images_per_s": float(m.group(2))} for m in
                    re.finditer(r"^\s+(\S+)\s+(\d+) student-img/s$", job.output(), re.MULTILINE)}
        before = 0.0  # seconds from the row before (under --compile: the compilation, warm-up and timed rounds)
        for name, t in sorted(((n, t) for n, t in job.marks.items() if t is not None), key=lambda nt: nt[1]):
            if name in rows:
                rows[name]["seconds_to_row"] = round(t - before, 1)
            before = t
        status = "ok" if figures else "partial" if job.timed_out else "failed"
        details[label] = {"status": status, "rows": rows, "seconds": round(job.seconds, 1),
                          "meta": figures["meta"] if figures else None}
        if not figures:
            details[label]["error"] = job.error()
            missing = ', '.join(r for r in BENCH_ROWS if r not in rows) or 'none'
            (partial if job.timed_out else failed).append(f"{label}: {job.error()}; not measured: {missing}")
    eager = details["eager"].get("rows", {})
    if all(eager.get(r, {}).get("images_per_s") for r in ("vanilla", "bare_compute", "conventional")):
        vanilla = eager["vanilla"]["images_per_s"]
        details["vanilla_vs_bare"] = round(vanilla / eager["bare_compute"]["images_per_s"], 3)
        details["vanilla_vs_conventional"] = round(vanilla / eager["conventional"]["images_per_s"], 3)
    compiled = details.get("compile", {}).get("rows", {})
    details["compile_speedup"] = {m: round(compiled[m]["images_per_s"] / eager[m]["images_per_s"], 3)
                                  for m in METHODS if m in compiled and m in eager}
    return details, failed, partial


def part_e(c, budget):
    """torchrun with one process and --sync-bn, killed after its first epoch and resumed; then NCCL itself."""
    if not c.cuda:
        raise Skip("needs CUDA: NCCL and --sync-bn run on GPUs only (torchrun on CPU/gloo is in the test suite)")
    start, deadline, failed = time.monotonic(), time.monotonic() + budget, []
    out, epochs = c.work("e_dml"), 10
    size = ["--limit-train", "256", "--limit-test", "64", "--batch-size", "64"] if c.args.quick else []
    cmd = python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "dml.py", "--dataset",
                 "synthetic", "--arch", "resnet20", "--epochs", str(epochs), *size, "--sync-bn", "--device", c.device,
                 "--out-dir", out)
    first = Job(cmd, c.log("e", "first"), marks={"epoch": r"^epoch 1/"})
    wait_all([first], start + 0.4 * budget, on_poll=lambda j: j.marks["epoch"] is not None and j.kill())
    killed_at = len(read_metrics(out))
    details = {"killed_after_epochs": killed_at, "first_exit": first.proc.returncode}
    if first.proc.returncode == 0:
        failed.append(f"the run finished all {epochs} epochs before it could be killed")
    elif not killed_at:
        failed.append(f"the first run did not finish an epoch ({first.error()})")
    resumed = Job(cmd + ["--resume"], c.log("e", "resumed"))
    wait_all([resumed], start + 0.8 * budget)
    metrics, results = read_metrics(out), read_json(os.path.join(out, "results.json"))
    details.update(resume_exit=resumed.proc.returncode, epochs_logged=[r["epoch"] for r in metrics],
                   resumed_line=next((ln for ln in resumed.output().splitlines() if ln.startswith("resumed")), None),
                   finite=finite(metrics), final=results["final"] if results else None,
                   world_size=results["args"].get("world_size") if results else None,
                   device=results["device"] if results else None)
    if resumed.proc.returncode != 0 or details["epochs_logged"] != list(range(1, epochs + 1)):
        failed.append(f"the resumed run did not complete epochs 1..{epochs} once each ({resumed.error()})")
    if results and not results["args"].get("distributed"):
        failed.append("the run under torchrun did not take the distributed path (no process group, no DDP)")
    probe_path = os.path.join(c.work_dir, "nccl_probe.py")
    with open(probe_path, "w") as f:
        f.write(NCCL_PROBE)
    probe = Job(python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", probe_path),
                c.log("e", "nccl_probe"))
    wait_all([probe], deadline)
    line = next((ln for ln in probe.output().splitlines() if "GPU_CHECK " in ln), None)
    details["nccl_probe"] = json.loads(line.split("GPU_CHECK ", 1)[1]) if line else {"error": probe.error()}
    if probe.proc.returncode != 0 or line is None:
        failed.append(f"NCCL probe: {probe.error()}")
    return details, failed


def part_f(c, budget):
    """bench_data.py on generated ImageNet-size JPEGs, one DataLoader worker per core."""
    deadline = time.monotonic() + budget
    workers = 1 if c.args.quick else c.cores
    batch = 8 if c.args.quick else 64
    batches = 3 if c.args.quick else 6 * workers  # several batches per worker: not only the workers' first ones
    images = batch * (batches + 1)
    out = c.work("f_bench_data") + ".json"
    argv = ["--workers", str(workers), "--batch-size", str(batch), "--batches", str(batches), "--image-size", "224",
            "--device", c.device, "--out", out]
    if workers == 1:
        argv += ["--images", str(images)]
    else:  # the JPEGs written in parallel, one class folder per worker (bench_data writes them one at a time)
        root, per = c.work("f_jpegs"), -(-images // workers)
        write = "import sys; sys.path.insert(0, 'scripts'); import bench_data; " \
                "bench_data.write_jpegs(sys.argv[1], int(sys.argv[2]), 1, int(sys.argv[3]))"
        jobs = [Job(python("-c", write, f"{root}_{k}", str(per), str(k)), c.log("f", f"write_{k}"), env=c.threads)
                for k in range(workers)]
        done, _ = wait_all(jobs, deadline)
        if any(j.proc.returncode != 0 for j in done):
            raise RuntimeError(f"writing the JPEGs failed: {next(j.error() for j in done if j.proc.returncode)}")
        for k in range(workers):
            for split in ("train", "val"):
                os.makedirs(os.path.join(root, split), exist_ok=True)
                os.rename(os.path.join(f"{root}_{k}", split, "c0"), os.path.join(root, split, f"c{k}"))
        argv += ["--data-dir", root]
    job = Job(python("scripts/bench_data.py", *argv), c.log("f", "bench_data"))
    wait_all([job], deadline)
    figures = read_json(out)
    if job.proc.returncode != 0 or figures is None:
        return {"error": job.error()}, [job.error()]
    rates = {k: round(v) for k, v in figures.items() if k == "streamed" or k.startswith("in_memory")}
    return {**figures, **rates, "images": images, "batches": batches}, []


def cifar10_folder(c):
    """An ImageFolder copy of CIFAR-10 (train/, test/): --data-dir itself, or the tarball extracted into the
    work folder (with --quick, 20 training and 10 test images a class)."""
    where = c.args.data_dir
    if where is None:
        found = [p for p in (os.environ.get("CIFAR10_JPEG"), os.path.join(ROOT, "data", TAR_NAME))
                 if p and os.path.exists(p)]
        if not found:
            raise Skip(f"no CIFAR-10 copy: pass --data-dir (the {TAR_NAME} tarball, or a folder with train/ and "
                       f"test/; scripts/cifar10_jpeg.py makes it)")
        where = found[0]
    c.data_source = os.path.abspath(where)
    if os.path.isdir(where):
        if os.path.isdir(os.path.join(where, "train")) and os.path.isdir(os.path.join(where, "test")):
            return where
        if not os.path.isfile(os.path.join(where, TAR_NAME)):
            raise RuntimeError(f"--data-dir {where} holds neither train/ and test/ nor {TAR_NAME}")
        where = os.path.join(where, TAR_NAME)
    if not os.path.isfile(where):
        raise RuntimeError(f"--data-dir {where} does not exist")
    want = {"train": 20, "test": 10} if c.args.quick else {"train": None, "test": None}
    dest, seen = c.work("d_cifar10"), {}
    with tarfile.open(where) as tar:
        for member in tar:
            parts = member.name.strip("/").split("/")
            if not member.isfile() or len(parts) < 3 or parts[-3] not in want:
                continue
            key = (parts[-3], parts[-2])
            if want[parts[-3]] is None or seen.get(key, 0) < want[parts[-3]]:
                seen[key] = seen.get(key, 0) + 1
                os.makedirs(os.path.join(dest, *key), exist_ok=True)
                with open(os.path.join(dest, *key, parts[-1]), "wb") as f:
                    f.write(tar.extractfile(member).read())
    if not seen:
        raise RuntimeError(f"{where} holds no train/<class>/* and test/<class>/* images")
    return dest


def part_d(c, budget):
    """Vanilla, DML and FFL side by side on the full CIFAR-10: one epoch first to time it, then as many
    epochs as the rest of the budget holds, the same seed and recipe for all three."""
    deadline = time.monotonic() + budget
    t0 = time.monotonic()
    data_dir = cifar10_folder(c)
    details = {"data": c.data_source, "prepare_seconds": round(time.monotonic() - t0, 1)}
    methods = ["vanilla", "dml", "ffl"]
    batch = "50" if c.args.quick else "128"

    def flags(m, epochs):
        warmup = min(5.0, epochs / 4)  # the default 5 epochs, or a quarter of a short run
        extra = ["--rampup", f"{epochs * 80 / 300:g}"] if m == "ffl" else []  # FFL's ramp, its paper's share
        return ["--dataset", "folder", "--data-dir", data_dir, "--arch", "resnet20", "--students", "2",
                "--batch-size", batch, "--seed", "0", "--epochs", str(epochs), "--lr-warmup", f"{warmup:g}",
                "--device", c.device, *extra]

    def side_by_side(epochs, tag):
        jobs = {}
        for m in methods:  # "<name>: ..." is printed when the data is loaded and the method built
            jobs[m] = Job(python(SCRIPT[m], *flags(m, epochs), "--out-dir", c.work(f"d_{tag}_{m}")),
                          c.log("d", f"{tag}_{m}"), env=c.threads, marks={"built": rf"^{m}: ", "epoch": r"^epoch 1/"})
            jobs[m].out = c.work(f"d_{tag}_{m}")
        wait_all(list(jobs.values()), deadline)
        return jobs

    timing = side_by_side(1, "timing")
    if any(j.marks["epoch"] is None or j.marks["built"] is None for j in timing.values()):
        bad = [f"{m}: {j.error()}" for m, j in timing.items() if j.proc.returncode != 0]
        raise RuntimeError(f"the timing epoch failed ({'; '.join(bad) or 'no epoch line'})")
    epoch_wall = max(j.marks["epoch"] - j.marks["built"] for j in timing.values())
    startup = max(j.marks["built"] for j in timing.values())
    left = deadline - time.monotonic()
    epochs = max(1, int((left - startup - 10) / (1.1 * epoch_wall)))  # 10 s and 10 % to spare
    if c.args.quick:
        epochs = 1
    details.update(epoch_seconds=round(epoch_wall, 1), startup_seconds=round(startup, 1), epochs=epochs,
                   side_by_side=len(methods))
    final = timing if epochs == 1 else side_by_side(epochs, "final")  # one epoch: the timing runs are the runs
    rows, failed, partial = {}, [], []
    for m, job in final.items():
        metrics, results = read_metrics(job.out), read_json(os.path.join(job.out, "results.json"))
        last = {k[len("top1_"):]: v for k, v in metrics[-1].items() if k.startswith("top1_")} if metrics else None
        rows[m] = {"exit": job.proc.returncode, "epochs_done": len(metrics), "seconds": round(job.seconds, 1),
                   "final": results["final"] if results else last, "finite": finite(metrics)}
        for key in ("best", "best_epoch", "collapsed", "images_per_s"):
            rows[m][key] = results[key] if results else None
        if job.proc.returncode != 0 or results is None:
            rows[m]["error"] = job.error()
            said = f"{m}: {job.error()} after {len(metrics)} of {epochs} epochs"
            (partial if job.timed_out else failed).append(said)
    details["runs"] = rows
    students = {m: max(v for h, v in r["final"].items() if re.fullmatch(r"s\d+", h)) for m, r in rows.items()
                if r["final"]}  # the best deployed student's final top-1, and its gain over vanilla's
    if "vanilla" in students:
        details["best_student_final"] = {m: {"top1": v, "vs_vanilla": round(v - students["vanilla"], 2)}
                                         for m, v in students.items()}
    return details, failed, partial


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e, "f": part_f}


# ==================================================================================================
# The reports
# ==================================================================================================

def fmt(v, digits=0):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def heads(figures):
    return ", ".join(f"{h} {v:.2f}" for h, v in figures.items()) if figures else "-"


def markdown(report):
    meta, parts = report["meta"], report["parts"]
    env = parts["a"].get("details") or {}
    gpu = (env.get("gpus") or [{}])[0]
    lines = [f"# GPU check: {gpu.get('name', 'no GPU')} ({meta['date']})", "",
             f"`{meta['command']}`", "",
             f"torch {env.get('torch', '?')}, torchvision {env.get('torchvision', '?')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, NCCL {env.get('nccl', '-')}, Python {env.get('python', '?')}; "
             f"{env.get('cores_usable', '?')} cores; device {meta.get('device', '?')}"
             f"{', --quick' if meta['quick'] else ''}; {meta['elapsed']:.0f} s of the {meta['budget']:.0f} s budget "
             f"({meta['cpu_seconds']:.0f} CPU seconds).",
             "", "| part | what | status | seconds | CPU seconds | budget |", "|---|---|---|---|---|---|"]
    for p in sorted(parts):
        r = parts[p]
        said = r.get("reason") or r.get("error") or ""
        lines.append(f"| {p} | {r['title']} | {r['status']}{': ' + said[:200] if said else ''} | "
                     f"{fmt(r.get('seconds'))} | {fmt(r.get('cpu_seconds'))} | {fmt(r.get('budget_s'))} |")
    for p in sorted(parts):
        r, d = parts[p], parts[p].get("details") or {}
        lines += ["", f"## {p}. {r['title']}: {r['status']}", ""]
        if r.get("reason") or r.get("error"):
            lines += [r.get("reason") or r.get("error"), ""]
        if r.get("traceback"):
            lines += ["```", r["traceback"].rstrip(), "```", ""]
        if not d:
            continue
        if p == "a":
            lines += [f"- {k}: {v}" for k, v in d.items()]
        elif p == "b":
            lines += ["| method | variant | status | exit | seconds | loss | finite | final top-1 | img/s | peak MiB |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for row in d["runs"]:
                lines.append(f"| {row['method']} | {row['variant']} | {row['status']} | {row['exit']} | "
                             f"{fmt(row['seconds'], 1)} | {fmt(row['loss'], 4)} | {row['finite']} | "
                             f"{heads(row['top1'])} | {fmt(row['images_per_s'])} | {fmt(row['peak_mib'])} |")
                if row["error"]:
                    lines.append(f"| | | {row['error'][:200]} | | | | | | | |")
            lines += [f"- {v}: skipped ({why})" for v, why in d["skipped_variants"].items()]
        elif p == "c":
            eager, compiled = d["eager"].get("rows", {}), d.get("compile", {}).get("rows", {})
            meta_c = d["eager"].get("meta") or {}
            lines += [f"{meta_c.get('arch', '?')}, batch {meta_c.get('batch_size', '?')}, {meta_c.get('amp', '?')}; "
                      f"student-images/s, best of {meta_c.get('rounds', '?')} rounds of {meta_c.get('steps', '?')} "
                      f"steps; --compile: {d.get('compile', {}).get('status', '-')}"
                      f"{' (' + d['compile']['reason'] + ')' if d.get('compile', {}).get('reason') else ''}", "",
                      "| row | students | eager | vs vanilla | peak MiB | compiled | compiled / eager | "
                      "compiled peak MiB | s to compiled row |", "|---|---|---|---|---|---|---|---|---|"]
            vanilla = eager.get("vanilla", {}).get("images_per_s")
            for name in ["bare_compute", "conventional", *METHODS]:
                e, k = eager.get(name, {}), compiled.get(name, {})
                rel = e["images_per_s"] / vanilla if vanilla and e.get("images_per_s") else None
                speed = d["compile_speedup"].get(name)
                lines.append(f"| {name} | {e.get('students', '-')} | {fmt(e.get('images_per_s'))} | {fmt(rel, 2)} | "
                             f"{fmt(e.get('peak_mem_mib'))} | {fmt(k.get('images_per_s'))} | {fmt(speed, 2)} | "
                             f"{fmt(k.get('peak_mem_mib'))} | {fmt(k.get('seconds_to_row'), 1)} |")
            if "vanilla_vs_bare" in d:
                lines += ["", f"vanilla: {d['vanilla_vs_bare']:.2f} x bare compute, "
                              f"{d['vanilla_vs_conventional']:.2f} x the conventional pipeline"]
        elif p == "d":
            lines += [f"{d.get('epochs', '?')} epochs (one timing epoch: {fmt(d.get('epoch_seconds'), 1)} s with "
                      f"{d.get('side_by_side', '?')} runs side by side on the device, start-up "
                      f"{fmt(d.get('startup_seconds'), 1)} s); data prepared in {fmt(d.get('prepare_seconds'), 1)} s",
                      "", "| method | exit | epochs done | final top-1 | best top-1 (epoch) | img/s | seconds |",
                      "|---|---|---|---|---|---|---|"]
            for m, row in d.get("runs", {}).items():
                best = ", ".join(f"{h} {v:.2f} ({row['best_epoch'][h]})" for h, v in row["best"].items()) \
                    if row["best"] else "-"
                lines.append(f"| {m} | {row['exit']} | {row['epochs_done']} | {heads(row['final'])} | {best} | "
                             f"{fmt(row['images_per_s'])} | {fmt(row['seconds'], 1)} |")
            if d.get("best_student_final"):
                lines += ["", "best student, final top-1 (vs vanilla's): " + ", ".join(
                    f"{m} {g['top1']:.2f} ({g['vs_vanilla']:+.2f})" for m, g in d["best_student_final"].items())]
        else:
            lines += [f"- {k}: {v}" for k, v in d.items()]
    return "\n".join(lines) + "\n"


# ==================================================================================================
# The check
# ==================================================================================================

def cpu_seconds():
    """CPU time of this process and of every subprocess it has waited for (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Check:
    def __init__(self, args):
        self.args, self.cuda, self.cores = args, False, os.cpu_count() or 1
        self.threads = {"OMP_NUM_THREADS": "1"} if args.quick or args.device == "cpu" else {}
        os.makedirs(args.out, exist_ok=True)
        self.work_dir = tempfile.mkdtemp(prefix="gpu_check_", dir=args.work_dir)
        self.t0 = time.monotonic()
        budgets = dict(QUICK_BUDGETS if args.quick else BUDGETS)
        budgets.update(args.part_budget)
        self.report = {"meta": {"command": " ".join(["python", "scripts/gpu_check.py", *sys.argv[1:]]),
                                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
                                "budget": args.budget, "elapsed": 0.0, "device": None},
                       "parts": {p: {"title": TITLES[p], "status": "not reached", "budget_s": budgets[p]}
                                 for p in ORDER}}
        for p in set(ORDER) - set(args.parts) - {"a"}:
            self.report["parts"][p].update(status="skipped", reason="not selected (--parts)")

    @property
    def device(self):
        return "cuda" if self.cuda else "cpu"

    def work(self, name):
        return os.path.join(self.work_dir, name)

    def log(self, part, name):
        return os.path.join(self.args.out, "logs", part, f"{name}.log")

    def write(self):
        self.report["meta"].update(elapsed=round(time.monotonic() - self.t0, 1), cpu_seconds=round(cpu_seconds(), 1))
        try:
            readable = markdown(self.report)
        except Exception:  # the JSON report is still written; the readable one says why it is not
            readable = f"# GPU check\n\nthis report could not be rendered; see gpu_check.json\n\n```\n" \
                       f"{traceback.format_exc()[-2000:]}```\n"
        for name, text in (("gpu_check.json", json.dumps(self.report, indent=2)), ("gpu_check.md", readable)):
            path = os.path.join(self.args.out, name)
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)

    def run(self, part):
        record = self.report["parts"][part]
        left = self.args.budget - (time.monotonic() - self.t0)
        budget = min(record["budget_s"], left)
        if record["status"] == "skipped":
            pass
        elif budget < 5:
            record.update(status="not reached", reason=f"the check's budget of {self.args.budget:g} s was spent")
        else:
            t0, cpu0 = time.monotonic(), cpu_seconds()
            record["status"] = "running"
            self.write()
            try:
                out = PARTS[part](self, budget)
                details, failed, partial = (out + ([],))[:3] if isinstance(out, tuple) else (out, [], [])
                record.update(details=details, status="failed" if failed else "partial" if partial else "ok")
                if failed or partial:
                    record["error" if failed else "reason"] = "; ".join(failed + partial)
            except Skip as e:
                record.update(status="skipped", reason=str(e))
            except Exception as e:
                record.update(status="failed", error=f"{type(e).__name__}: {e}",
                              traceback=traceback.format_exc()[-3000:])
            record.update(seconds=round(time.monotonic() - t0, 1), cpu_seconds=round(cpu_seconds() - cpu0, 1))
        if part == "a":
            self.report["meta"]["device"] = self.device
        self.write()


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence and exit status 2, as the method scripts do
        self.exit(2, f"error: {message} (see --help)\n")


def parse():
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("runs", "gpu_check"),
                   help="folder for gpu_check.json, gpu_check.md and logs/ (default: runs/gpu_check)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="default: cuda where there is one")
    p.add_argument("--quick", action="store_true", help="tiny sizes: under a minute on 2 CPU cores")
    p.add_argument("--data-dir", default=None, help=f"CIFAR-10 for part d: the {TAR_NAME} tarball or a folder "
                                                     "with train/<class>/* and test/<class>/*")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole check (default 480; "
                                                               "--quick: 600, a guard only)")
    p.add_argument("--part-budget", default="", help="seconds per part, e.g. c=300,d=200 (defaults: "
                                                      + ",".join(f"{k}={v}" for k, v in BUDGETS.items()) + ")")
    p.add_argument("--parts", default=",".join(ORDER), help="comma list of the parts to run (default: all; a always "
                                                             "runs: it finds the device)")
    p.add_argument("--work-dir", default=None, help="where the temporary runs and data go (default: the system's "
                                                     "temporary folder); removed at the end")
    a = p.parse_args()
    try:
        a.part_budget = {k.strip(): float(v) for k, v in (s.split("=") for s in a.part_budget.split(",") if s.strip())}
    except ValueError:
        p.error(f"--part-budget takes PART=SECONDS,...; got '{a.part_budget}'")
    a.parts = [s.strip() for s in a.parts.split(",") if s.strip()]
    unknown = sorted((set(a.parts) | set(a.part_budget)) - set(ORDER))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(sorted(ORDER))}")
    if a.budget is None:
        a.budget = 600.0 if a.quick else 480.0
    return a


def main():
    check = Check(parse())

    def stop(signum, frame):  # killed from outside: end the runs, keep the reports of the parts finished
        for job in list(LIVE):
            job.kill()
        for record in check.report["parts"].values():
            if record["status"] == "running":
                record.update(status="failed", error=f"the check was stopped (signal {signum}) during this part")
        check.write()
        shutil.rmtree(check.work_dir, ignore_errors=True)
        sys.exit(124)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for part in ORDER:
            check.run(part)
    finally:
        for job in list(LIVE):
            job.kill()
        shutil.rmtree(check.work_dir, ignore_errors=True)
    statuses = {p: r["status"] for p, r in check.report["parts"].items()}
    print(f"gpu_check: {', '.join(f'{p} {s}' for p, s in sorted(statuses.items()))}; "
          f"{check.report['meta']['elapsed']:.0f} s; reports in {check.args.out}/gpu_check.md and .json")
    sys.exit(1 if "failed" in statuses.values() else 0)


if __name__ == "__main__":
    main()
