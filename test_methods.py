"""Tests, in the order of the files they test. Helpers several sections use come first; then
- common.py, as it reads: the run and the loop (determinism and resume, what a run records, the learning-rate
  schedule and its warm-up, loss sums, progress, evaluation, the collapse check), checkpoints and exports, the
  run folder (lock, resume checks, faults and interrupts, checksums), backbones, data (in memory, streamed, image
  folders and their cache, other data sets, augmentation), torchrun, flags and recipes, errors;
- each method file in the README's order: dml, kdcl, the feature fusion ffl, ffcl and fefr share, ffl, ffcl,
  fefr, ffsd, mkb_cl, one (its loss against the paper's equations, its gradients, its flags, end to end on tiny
  budgets), then what every method file holds (shared definitions, docstrings, the checklist of "Adding a
  method", the contract, copied alone, exports, recipes);
- the scripts: bench_speed, cifar10_jpeg, compare, evaluate, gpu_check, plot, published and reproduce;
- the repository's own checks, then the torchrun driver (`python test_methods.py MODE OUT`).
Every test is named for the file it tests (test_common_, test_kdcl_, test_compare_, ...; of every method file:
test_method_files_, its ids naming each): `pytest -k kdcl` finds every KDCL test.

Run: python -m pytest -q test_methods.py -m "not slow"   (the fast subset: 81 seconds on 2 quiet CPU cores)
     python -m pytest -q test_methods.py                  (the whole suite: 12 min 49 s on 2 quiet CPU cores)
     measured 2026-12-07 on a 2-core x86-64 CPU (the whole suite with CIFAR10_JPEG set, as .ci/run runs it)
Marked `slow` (pyproject.toml): end-to-end runs, real-data tests, torchrun, the scripts' --quick runs, each test
of more than about 5 seconds.
"""
import copy
import importlib
import inspect
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import dml  # noqa: E402
import fefr  # noqa: E402
import ffcl  # noqa: E402
import ffl  # noqa: E402
import ffsd  # noqa: E402
import kdcl  # noqa: E402
import mkb_cl  # noqa: E402
import one  # noqa: E402
sys.path.insert(0, os.path.join(HERE, "scripts"))
import published  # noqa: E402
import reproduce  # noqa: E402


METHOD_MODULES = [importlib.import_module(name) for name in common.METHODS if name != "vanilla"]

METHOD_FILES = [m.__name__ + ".py" for m in METHOD_MODULES]
PROJECT_MODULES = {"common", *(m.__name__ for m in METHOD_MODULES)}


# Real CIFAR-10 as JPEGs, made by scripts/cifar10_jpeg.py: the environment variable CIFAR10_JPEG names the tarball
# or an extracted folder (train/<class>/*.jpg, test/<class>/*.jpg), by default data/cifar10-jpeg.tar.gz in the
# repository (data/ is ignored by git). Without it the tests on real images skip, saying how to make it.
CIFAR10_JPEG = os.path.abspath(os.environ.get("CIFAR10_JPEG") or os.path.join(HERE, "data", "cifar10-jpeg.tar.gz"))

# the smallest run that exercises everything: 2 x resnet20, 256 synthetic images, one epoch
TINY = ["--dataset", "synthetic", "--limit-train", "256", "--limit-test", "128", "--epochs", "1",
        "--batch-size", "64", "--arch", "resnet20", "--device", "cpu"]

# smaller still, for runs that only check that a flag trains (the later flag wins): two steps, 64 test images
SMOKE = TINY + ["--limit-train", "128", "--limit-test", "64"]

# what no file of the repository but .ci/run may name (written so that this line does not name them itself)
FORBIDDEN = r"\.\.[/]shared|shared[/]papers|shared[/]METHODS|METHODS[.]md|[/]work[/]|[/]tmp[/]|carry[ ]it"


def vanilla(argv):
    return common.main(argv=argv)


def run_main(main, argv, out_dir):
    """Run a script's main() in-process and return its results.json (which must be what main returned)."""
    returned = main(argv + ["--out-dir", str(out_dir)])
    with open(os.path.join(out_dir, "results.json")) as f:
        saved = json.load(f)
    assert returned["final"] == saved["final"]
    return saved


def run_cli(script, *argv):
    """Run a script as a user would; returns (exit status, stdout + stderr)."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, script), *argv], capture_output=True, text=True,
                          cwd=HERE, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def usage_error(capsys, run):
    """Call a main() that must stop on a user's mistake: exit status 2, one `error: ...` line on stderr
    (returned)."""
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def one_line_error(capsys, run, code=2):
    """Call a main() that must stop: exit status `code`, one `error...: ...` line on stderr (returned)."""
    with pytest.raises(SystemExit) as stop:
        run()
    err = capsys.readouterr().err
    assert stop.value.code == code and err.startswith("error") and len(err.strip().splitlines()) == 1, err
    return err


def refuse(error):
    def fake(*args, **kwargs):
        raise error
    return fake


def method_args(module, argv, tmp_path):
    """A method script's flags, parsed and checked as its main() does (output folder under tmp_path)."""
    parser = common.make_parser()
    module.add_arguments(parser)
    args = parser.parse_args(argv + ["--out-dir", str(tmp_path / "run"), "--device", "cpu"])
    return common.check_args(args)


def fake_data(num_classes=10, n=8, size=32):
    """What a method's build() reads from the data: the number of classes and the image size."""
    return SimpleNamespace(num_classes=num_classes, image_size=(size, size))


def build_method(module, argv, tmp_path, num_classes=10):
    return module.build(method_args(module, argv, tmp_path), fake_data(num_classes))


def script_parser(module=None):
    parser = common.make_parser()
    if module is not None:
        module.add_arguments(parser)
    return parser


def script_module(name):
    """scripts/<name>.py imported in-process (its main() is called as a user's command would call it)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(HERE, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records]


def check_heads(results, heads=("s0", "s1", "ens")):
    """Every head in results.json's final and best, as a top-1 percentage."""
    for key in ("final", "best"):
        assert set(heads) <= set(results[key]), results[key]
        assert all(0 <= results[key][h] <= 100 for h in heads)
    return results


# ================================================================================================
# Helpers every section shares: image folders, real CIFAR-10, reference maths, torchrun, a method file copied alone
# ================================================================================================

def write_image_folder(root, splits=(("train", 8), ("val", 2)), classes=3, seed=0):
    """A tiny ImageFolder of random JPEGs of random sizes (40-90 px), each class its own brightness."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in splits:
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(40, 90, 2)
                Image.fromarray((rng.random((h, w, 3)) * 80 + 60 * c).astype("uint8")).save(folder / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """3 classes x (8 train, 2 val) random JPEGs in ImageNet's layout (DIR/train, DIR/val)."""
    return write_image_folder(tmp_path_factory.mktemp("imagenet"))


def extract_cifar10(root, want):
    """The first `want[split]` images of every class of the CIFAR-10 JPEG copy (CIFAR10_JPEG), in the ImageFolder
    layout under root: in the tarball's order (the copy the measured constants below come from), or by file name
    in a folder (the same images for a tarball scripts/cifar10_jpeg.py wrote: its members are sorted). Without a
    copy the test skips, saying how to make one."""
    if not os.path.exists(CIFAR10_JPEG):
        pytest.skip(f"no CIFAR-10 JPEG copy at {CIFAR10_JPEG}: make it with `python scripts/cifar10_jpeg.py` (from "
                    f"torchvision's CIFAR-10 download), or point CIFAR10_JPEG at one")
    if os.path.isdir(CIFAR10_JPEG):
        files = ((os.path.relpath(os.path.join(d, f), CIFAR10_JPEG), os.path.join(d, f))
                 for d, subfolders, names in sorted(os.walk(CIFAR10_JPEG)) for f in sorted(names))
        members = ((name, lambda path=path: open(path, "rb").read()) for name, path in files)
    else:
        tar = tarfile.open(CIFAR10_JPEG)
        members = ((m.name, lambda m=m: tar.extractfile(m).read()) for m in tar if m.isfile())
    seen = {}
    for name, read in members:
        parts = name.replace(os.sep, "/").strip("/").split("/")
        if len(parts) < 3 or parts[-3] not in want or not parts[-1].lower().endswith(".jpg"):
            continue
        key = (parts[-3], parts[-2])
        if seen.get(key, 0) < want[parts[-3]]:
            seen[key] = seen.get(key, 0) + 1
            dest = root / parts[-3] / parts[-2]
            dest.mkdir(parents=True, exist_ok=True)
            (dest / parts[-1]).write_bytes(read())
    if not os.path.isdir(CIFAR10_JPEG):
        tar.close()
    assert len(seen) == 20 and all(n == want[split] for (split, _), n in seen.items())
    return root


# loop-based references (plain Python maths) and a stand-in student, shared by the methods' tests
def ce_loop(z, y):
    """-log softmax(z)[y] for one sample, with plain Python math (float64)."""
    z = [float(v) for v in z]
    m = max(z)
    return m + math.log(sum(math.exp(v - m) for v in z)) - z[y]


def softmax_loop(z, T=1.0):
    z = [float(v) / T for v in z]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def random_logits(K, B, C, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, B, C, generator=g) * scale, torch.randint(0, C, (B,), generator=g)


class TinyStudent(nn.Module):
    """A stand-in backbone: remembers its last input, returns (logits, [features])."""

    def __init__(self, num_classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * 4 * 4, num_classes)
        self.last_input = None

    def forward(self, x):
        self.last_input = x
        return self.fc(x.flatten(1)), [x]


def tiny_batch(seed=0, B=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 4, 4, generator=g), torch.randint(0, 5, (B,), generator=g)


def grads_of(module):
    return [p.grad for p in module.parameters()]


def check_kd_gradient_stays_with_student(method, views, y):
    loss, parts = method(views, y)
    parts["kd_s0"].backward()
    assert any(g is not None and g.abs().sum() > 0 for g in grads_of(method.students[0]))
    for peer in method.students[1:]:  # the peers (the teacher side) receive nothing
        assert all(g is None or g.abs().sum() == 0 for g in grads_of(peer))


DDP = ["--dataset", "synthetic", "--limit-train", "160", "--limit-test", "64", "--batch-size", "32",
       "--arch", "resnet20", "--device", "cpu", "--epochs", "1"]


def torchrun(*argv, timeout=600, nproc=2):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *argv], capture_output=True, text=True, cwd=HERE, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stdout + proc.stderr


COPY_ALONE = r"""
import copy, importlib, importlib.util, os, sys, traceback
import torch, torchvision

# the user's own students: torchvision classifiers, made students by common.as_student, loaded by its path
spec = importlib.util.spec_from_file_location("helper_not_on_path", HELPER)
helper = importlib.util.module_from_spec(spec)
spec.loader.exec_module(helper)


def student(seed, arch="resnet18"):
    torch.manual_seed(seed)
    return helper.as_student(getattr(torchvision.models, arch)(num_classes=5))


class OwnNet(torch.nn.Module):  # the user's own stage-structured network, what ONE cuts: stages, then classifier
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        block = lambda cin, cout, s: torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, s, 1, bias=False),
                                                         torch.nn.BatchNorm2d(cout), torch.nn.ReLU())
        self.stages = torch.nn.ModuleList([block(3, 8, 1), block(8, 16, 2), block(16, 16, 2)])
        self.classifier = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5))

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.classifier(x), features


def build(name, M):
    S = lambda k: [student(i) for i in range(k)]
    return {"dml": lambda: M.DML([student(0), student(1, "mobilenet_v2")]),
            "kdcl": lambda: M.KDCL(S(2)),
            "ffl": lambda: M.FFL([student(0), student(1, "mobilenet_v2")], 5),
            "ffcl": lambda: M.FFCL(S(2), 5, pretrained=S(2)),
            "fefr": lambda: M.FEFR(S(2), 5),
            "ffsd": lambda: M.FFSD(S(3), 5),
            "mkb_cl": lambda: M.MKBCL(S(2), 5),
            "one": lambda: M.ONE([OwnNet(i) for i in range(3)])}[name]()


def train_and_evaluate(name):
    folder = os.path.join(ROOT, name)  # where the file lies alone
    assert sys.path[0] != HERE and HERE not in sys.path and not PROJECT & set(sys.modules)
    sys.path.insert(0, folder)
    try:
        method = build(name, importlib.import_module(name))
        opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.arange(8) % 5
        method.train()  # one step of a plain loop: no set_epoch, no param groups, nothing of ours
        views = [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(getattr(method, "num_views", 1))]
        loss, parts = method(views, y)
        assert torch.isfinite(loss) and torch.allclose(loss, sum(parts.values())), (loss, parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.eval()
        with torch.no_grad():
            heads = method(x)
        assert "ens" in heads and all(z.shape == (8, 5) for z in heads.values()), {h: z.shape for h, z in heads.items()}
        exported = reload_exports(name, method, importlib.import_module(name), x, heads, folder)
        loaded = sorted(PROJECT & set(sys.modules))
        assert loaded == [name], loaded
    finally:
        sys.path.remove(folder)
        sys.modules.pop(name, None)
    return sorted(parts), sorted(heads), exported


# method.export(): every payload saved, read back as plain data and loaded into the user's own fresh student of
# the same architecture (MKB-CL: with fresh halves), which must give its head's logits
ARCHS = {("dml", "s1"): "mobilenet_v2", ("ffl", "s1"): "mobilenet_v2"}  # build()'s mixed pairs


def reload_exports(name, method, M, x, heads, folder):
    exported = []
    for key, payload in (method.export() if hasattr(method, "export") else {}).items():
        path = os.path.join(folder, key + ".pt")
        torch.save(payload, path)
        payload = torch.load(path, weights_only=True)
        if payload["kind"] == "mkb_network":
            i = int(key[len("net"):])
            fresh = M.MKBNetwork(student(100), {int(k): M.MKBHalf(**c) for k, c in payload["mkb"].items()},
                                 image_size=payload["image_size"])
            head = f"s{i}"
        else:  # ONE's branch with the trunk is the user's own network
            fresh = OwnNet(100) if payload["module"] == "OwnNet" else student(100, ARCHS.get((name, key), "resnet18"))
            head = key
        fresh.load_state_dict(payload["state_dict"])
        with torch.no_grad():
            out = fresh.eval()(x)
        logits = out[0] if isinstance(out, tuple) else out
        assert torch.allclose(logits, heads[head], atol=1e-5), (key, (logits - heads[head]).abs().max())
        exported.append(key)
    return "exported:" + (",".join(exported) or "-")


for name in NAMES:
    try:
        print("trained", name, *train_and_evaluate(name), flush=True)
    except Exception:
        print("failed", name, repr(traceback.format_exc()), flush=True)
"""


@pytest.fixture(scope="module")
def copied_alone(tmp_path_factory):
    """Each method file copied alone into an empty folder, imported from there in one fresh interpreter (the
    project not on its path) and trained one step on torchvision students: {name: report line}."""
    import shutil
    root = tmp_path_factory.mktemp("copied_alone")
    names = [m.__name__ for m in METHOD_MODULES]
    for name in names:
        (root / name).mkdir()
        shutil.copy(os.path.join(HERE, name + ".py"), root / name)
    (root / "loop").mkdir()  # the script's own folder (first on its path) holds nothing else
    script = root / "loop" / "user_loop.py"
    script.write_text(f"PROJECT = set({sorted(PROJECT_MODULES)!r})\nHERE = {HERE!r}\nROOT = {str(root)!r}\n"
                      f"NAMES = {names!r}\nHELPER = {os.path.join(HERE, 'common.py')!r}\n" + COPY_ALONE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    reports = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith(("trained", "failed"))}
    return reports, proc.stderr[-3000:]


# ================================================================================================
# common.py, the run: determinism, resume, what a run records
# ================================================================================================

@pytest.mark.slow
def test_common_seed_makes_runs_identical_and_resume_continues_exactly(tmp_path):
    argv = SMOKE + ["--epochs", "2", "--milestones", "1"]
    run_main(vanilla, argv, tmp_path / "a")
    run_main(vanilla, argv, tmp_path / "b")
    run_main(vanilla, SMOKE + ["--milestones", "1"], tmp_path / "c")  # 1 epoch ...
    run_main(vanilla, argv + ["--resume"], tmp_path / "c")            # ... + resume to 2
    a, b, c = (without_timing(read_metrics(tmp_path / d)) for d in "abc")
    assert len(a) == 2 and a == b == c
    assert a[1]["lr"] == pytest.approx(0.1 * 0.1)  # after the milestone; the warm-up (half an epoch) is over
    for name in ("args.json", "metrics.jsonl", "last.pt", "best.pt", "results.json", "s0.pt", "s1.pt"):
        assert os.path.exists(tmp_path / "a" / name), name
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["method"] == "vanilla"
    results = json.load(open(tmp_path / "a" / "results.json"))
    for key in ("final", "best", "train_seconds", "device", "torch", "torchvision", "command", "params"):
        assert key in results


@pytest.mark.slow
def test_common_results_record_the_machine_and_the_code_commit(tmp_path):
    results = run_main(vanilla, SMOKE, tmp_path / "run")
    machine, code = results["machine"], results["code"]
    assert machine["threads"] == torch.get_num_threads() and machine["gpu"] is None and machine["processes"] == 1
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        assert machine["cpu"] == (names[0] if names else machine["cpu"]) and machine["cpu"]
    git = shutil.which("git") and subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True,
                                                 text=True).stdout.strip()
    if git:
        changes = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True).stdout
        assert code == {"commit": git, "modified": bool(changes.strip())}
    # outside a repository (a copy of common.py alone), or without git: None, said quietly
    shutil.copy(os.path.join(HERE, "common.py"), tmp_path)
    for env in ({}, {"PATH": str(tmp_path)}):
        proc = subprocess.run([sys.executable, "-c", "import common; print(common.code_version())"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env={**os.environ, **env})
        assert proc.stdout.strip() == "{'commit': None, 'modified': None}" and proc.stderr == "", proc.stderr


def test_common_plural_only_for_more_than_one():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert common.device_name(torch.device("cpu")).endswith(", 1 thread)")
    finally:
        torch.set_num_threads(threads)


# ================================================================================================
# common.py, the loop: the learning-rate schedule and its warm-up
# ================================================================================================

@pytest.mark.slow
def test_common_lr_warmup_is_linear_per_step_for_every_optimizer(tmp_path):
    """Step g (from 0) of a W-step warm-up runs at (g + 1) / W of each group's base lr: SGD and FFSD's Adam."""
    args = method_args(ffsd, SMOKE + ["--limit-train", "256", "--lr-warmup", "1.5", "--milestones", "9",
                                      "--epochs", "20"], tmp_path)  # long enough to keep its 1.5 epochs of warm-up
    settings = common.derive_settings(args)
    data = common.load_data(args, torch.device("cpu"))
    method = ffsd.build(args, data)
    optimizers = common.make_optimizers(method, args)
    assert len(optimizers) == 2
    seen = []

    def step_fn(views, y):  # records the lr each step trains at, then does the method's step
        seen.append([g["lr"] / g["base_lr"] for opt in optimizers for g in opt.param_groups])
        return method(views, y)

    gen = torch.Generator().manual_seed(0)
    for epoch in range(2):  # 4 steps an epoch: a 6-step warm-up ends in the second epoch
        common.train_epoch(step_fn, optimizers, data.train_batches(gen, 64, 4),
                           lambda i: common.lr_factor(args, settings, epoch, i, 4), settings,
                           common.Progress(False, epoch, 20, 4, 64))
    expected = [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1, 1, 1]
    assert [row[0] for row in seen] == pytest.approx(expected)
    assert all(row == pytest.approx([row[0]] * len(row)) for row in seen)  # every group of both optimizers


def test_common_lr_warmup_start_is_where_the_line_begins(tmp_path):
    """KDCL's ImageNet warm-up, 0.1 to 0.8: --lr 0.8 --lr-warmup-start 0.125; 0 and 1 are refused outside."""
    args = method_args(kdcl, ["--lr", "0.8", "--lr-warmup", "1", "--lr-warmup-start", "0.125"], tmp_path)
    settings = common.derive_settings(args)
    lrs = [0.8 * common.lr_factor(args, settings, 0, step, 4) for step in range(4)] + \
        [0.8 * common.lr_factor(args, settings, 1, 0, 4)]
    assert lrs == pytest.approx([0.1 + 0.7 * g / 4 for g in (1, 2, 3)] + [0.8, 0.8])
    with pytest.raises(common.UsageError, match="--lr-warmup-start"):
        method_args(kdcl, ["--lr-warmup-start", "1.5"], tmp_path)


@pytest.mark.slow
def test_common_lr_warmup_resumes_onto_the_same_curve(tmp_path):
    argv = SMOKE + ["--epochs", "6", "--lr-warmup", "2.5", "--milestones", "9"]  # 2 steps an epoch, 5 warming
    run_main(vanilla, argv, tmp_path / "a")
    run_main(vanilla, SMOKE + ["--epochs", "5", "--lr-warmup", "2.5", "--milestones", "9"], tmp_path / "b")
    run_main(vanilla, argv + ["--resume"], tmp_path / "b")  # 5 epochs, then on to 6: the same 2.5-epoch warm-up
    a, b = (without_timing(read_metrics(tmp_path / d)) for d in "ab")
    assert a == b and [r["lr"] for r in a] == pytest.approx([0.04, 0.08, 0.1, 0.1, 0.1, 0.1])


def old_lr_factor(args, settings, epoch, step, steps):
    """The schedule before the warm-up rule (the whole --lr-warmup, however short the run)."""
    factor = args.gamma ** sum(epoch >= m for m in settings.milestone_epochs)
    warmup_steps, done = args.lr_warmup * steps, epoch * steps + step + 1
    return factor * (args.lr_warmup_start + (1 - args.lr_warmup_start) * done / warmup_steps) \
        if done < warmup_steps else factor


def test_common_a_short_run_warms_up_over_at_most_half_the_epochs_before_its_first_decay_and_says_so(tmp_path, capsys):
    cases = [(["--epochs", "2"], 0.5), (["--epochs", "3"], 1.0), (["--epochs", "2", "--lr-warmup", "10"], 0.5),
             (["--epochs", "7", "--milestones", "6"], 3.0), (["--epochs", "40"], 5.0),
             (["--epochs", "10", "--milestones", "30"], 5.0), (["--epochs", "4", "--schedule", "cosine"], 2.0),
             (["--epochs", "40", "--lr-warmup", "0"], 0.0)]
    for argv, warmup in cases:  # min(--lr-warmup, half of the epochs before the first decay or the run's end)
        assert common.derive_settings(common.make_parser().parse_args(argv)).warmup_epochs == warmup, argv
    # the README table's regime (40 epochs, milestones 20 and 30, 5 epochs of warm-up): every step as before
    args = common.make_parser().parse_args(["--epochs", "40"])
    settings = common.derive_settings(args)
    for steps in (31, 28):  # 2,000 images (1,800 with KDCL's hold-out) in batches of 64
        assert [common.lr_factor(args, settings, e, g, steps) for e in range(40) for g in range(steps)] == \
            [old_lr_factor(args, settings, e, g, steps) for e in range(40) for g in range(steps)]
    # a 2-epoch default run (milestones 1, 2): half an epoch up to --lr, the rest of epoch 1 at it; said once
    results = run_main(vanilla, SMOKE + ["--epochs", "2", "--limit-train", "256"], tmp_path / "run")  # 4 steps
    out = capsys.readouterr().out
    assert out.count("warning: --lr-warmup") == 1 and ("warning: --lr-warmup 5 shortened to 0.5 epochs, half of the "
                                                       "1 epoch before the first lr decay") in out
    assert [r["lr"] for r in read_metrics(tmp_path / "run")] == pytest.approx([0.1, 0.01])
    assert results["args"]["warmup_epochs"] == 0.5 and results["args"]["lr_warmup"] == 5
    assert json.loads((tmp_path / "run" / "args.json").read_text())["warmup_epochs"] == 0.5
    # a warm-up that fits is not shortened and says nothing; a schedule that never reaches --lr says so
    args = common.make_parser().parse_args(["--epochs", "40"])
    common.warn_if_lr_unreached(args, common.derive_settings(args))
    assert capsys.readouterr().out == ""
    args = common.make_parser().parse_args(["--epochs", "4", "--schedule", "cosine"])
    common.warn_if_lr_unreached(args, common.derive_settings(args))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "shortened to 2 epochs, half of the run (--schedule cosine)" in lines[0]
    peak = 0.5 * (1 + math.cos(math.pi / 4))  # the warm-up ends in epoch 2, where the cosine is down to this
    assert f"never reaches --lr 0.1: its highest lr is {0.1 * peak:.3g} ({100 * peak:.0f} % of it)" in lines[1]


# ================================================================================================
# common.py, the loop: loss sums on the device, a non-finite loss, progress, --quiet, --tensorboard
# ================================================================================================

def test_common_loss_sums_stop_at_the_first_non_finite_step_when_they_check():
    """A non-finite part is found at the next check (every check_every steps, and at the epoch's end), named
    with the step (from 1) where it first went bad."""
    one, inf = torch.tensor(1.0), torch.tensor(float("inf"))
    losses = common.LossSums(steps=6, check_every=4)
    for step, kd in enumerate([one, one, inf]):  # step 3 goes bad: nothing is said before step 4's check
        losses.add(step, one + kd, {"ce_s0": one, "kd_s0": kd})
    with pytest.raises(common.NonFinite) as stop:
        losses.add(3, one + one, {"ce_s0": one, "kd_s0": one})
    assert (stop.value.part, stop.value.step) == ("kd_s0", 3)
    finite = common.LossSums(steps=2)
    for step in range(2):
        finite.add(step, torch.tensor(3.0), {"ce_s0": one, "ce_s1": 2 * one})
    assert finite.names == ["loss", "ce_s0", "ce_s1"] and finite.totals().tolist() == [6.0, 2.0, 4.0]
    assert finite.mean_loss(2) == 3.0


class Exploding(common.Vanilla):
    """Vanilla whose loss becomes NaN in the second epoch."""

    def set_epoch(self, epoch):
        self.epoch = epoch

    def forward(self, views, y=None):
        out = super().forward(views, y)
        if self.training and self.epoch == 1:
            loss, parts = out
            parts["ce_s1"] = parts["ce_s1"] * float("nan")
            return loss + parts["ce_s1"], parts
        return out


def test_common_non_finite_loss_stops_with_a_sentence_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    def build_exploding(args, data):
        return Exploding(common.build_students(args, data))

    message = usage_error(capsys, lambda: common.main("exploding", None, build_exploding,
                                                      SMOKE + ["--epochs", "3", "--out-dir", str(tmp_path)]))
    assert "'ce_s1' became non-finite at epoch 2, step 1" in message and "(epoch 1) is untouched" in message
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


class CountedLosses:
    """Stands for LossSums: counts the reads of the running loss (each one a wait for the device)."""
    reads = 0

    def mean_loss(self, steps_done):
        self.reads += 1
        return 2.5


def run_progress(monkeypatch, terminal, steps, seconds_per_step, quiet=False):
    """Progress over the second of 3 epochs, `steps` steps of 64 images on a fake clock; returns how often it
    read the loss."""
    now, losses = [0.0], CountedLosses()
    monkeypatch.setattr(common.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)
    with common.Progress(not quiet, 1, 3, steps, 64) as progress:
        for done in range(1, steps + 1):
            now[0] += seconds_per_step
            progress.update(done, losses)
    return losses.reads


def test_common_progress_on_a_terminal_is_one_line_rewritten_at_most_once_a_second(monkeypatch, capsys):
    reads = run_progress(monkeypatch, terminal=True, steps=10, seconds_per_step=0.5)
    out = capsys.readouterr().out
    assert "\n" not in out and reads == 4  # steps 2, 4, 6, 8: the last step leaves the line to the epoch's
    shown = [part.strip() for part in out.split("\r") if part.strip()]
    assert shown[0] == "epoch 2/3  step 2/10  128 img/s  loss 2.5000  eta 0:00:04  run eta 0:00:09"
    assert [line.split("  ")[1] for line in shown] == ["step 2/10", "step 4/10", "step 6/10", "step 8/10"]
    assert out.endswith("\r" + " " * len(shown[0]) + "\r")  # cleared for the epoch's line


def test_common_progress_in_a_log_prints_every_10_percent_or_minute_whichever_is_rarer(monkeypatch, capsys):
    assert run_progress(monkeypatch, terminal=False, steps=100, seconds_per_step=1.0) == 1  # a minute: rarer
    assert capsys.readouterr().out.splitlines() == [
        "epoch 2/3  step 60/100  64 img/s  loss 2.5000  eta 0:00:40  run eta 0:02:20"]
    assert run_progress(monkeypatch, terminal=False, steps=100, seconds_per_step=10.0) == 9  # 10 steps: rarer
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[1] for line in lines] == [f"step {s}/100" for s in range(10, 100, 10)]
    assert run_progress(monkeypatch, terminal=False, steps=100, seconds_per_step=10.0, quiet=True) == 0
    assert capsys.readouterr().out == ""


def test_common_a_run_prints_its_progress_in_a_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common.Progress, "PLAIN_EVERY_S", 0.0)  # not a terminal: every 10 % of the epoch's steps
    vanilla(SMOKE + ["--batch-size", "32", "--out-dir", str(tmp_path)])  # 3 steps
    out = capsys.readouterr().out
    assert "\nepoch 1/1  step 1/3  " in out and "\nepoch 1/1  step 2/3  " in out and "\nepoch 1/1  lr " in out


@pytest.mark.slow
def test_common_a_terminal_sees_the_run_eta_and_a_line_while_evaluating_and_recipe_help_lists_its_choices(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    vanilla(SMOKE + ["--out-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    line = "epoch 1/1  evaluating on 60 test images ..."  # --limit-test 64: 6 of each of the 10 classes
    assert "\r" + line + "\r" + " " * len(line) + "\r" in out and "run eta 0:00:00" in out
    status, output = run_cli("dml.py", "--help")
    help_text = " ".join(output.split()).split(" --recipe NAME ", 1)[1].split(" --baseline ", 1)[0]
    assert status == 0 and help_text.endswith("choices: paper") and "(default: None)" not in help_text
    status, output = run_cli("kdcl.py", "--help")
    assert "choices: paper, paper-imagenet" in " ".join(output.split())


def test_common_quiet_and_tensorboard_without_the_package_one_sentence_at_start_up(tmp_path, capsys, monkeypatch):
    """--tensorboard without the package: one sentence when the flags are parsed (before any data), and the
    run goes on without it; --quiet: the epoch's line only."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    args = common.make_parser().parse_args(["--tensorboard", str(tmp_path / "tb")])
    assert args.tensorboard is None
    err = capsys.readouterr().err
    assert err.startswith("warning: --tensorboard needs the tensorboard package") and err.count("\n") == 1
    monkeypatch.setattr(common.Progress, "PLAIN_EVERY_S", 0.0)
    results = vanilla(SMOKE + ["--batch-size", "32", "--quiet", "--tensorboard", str(tmp_path / "tb"),
                               "--out-dir", str(tmp_path / "run")])
    assert results["final"] and not (tmp_path / "tb").exists()
    out = capsys.readouterr().out
    assert " step " not in out and "\nepoch 1/1  lr " in out


def test_common_tensorboard_gets_the_epoch_scalars_and_the_lr(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    vanilla(SMOKE + ["--epochs", "2", "--quiet", "--tensorboard", str(tmp_path / "tb"),
                     "--out-dir", str(tmp_path / "run")])
    board = EventAccumulator(str(tmp_path / "tb"))
    board.Reload()
    logged = read_metrics(tmp_path / "run")
    assert set(board.Tags()["scalars"]) == set(logged[0]) - {"epoch"}
    for key in ("lr", "loss", "ce_s1", "top1_ens"):
        events = board.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx([r[key] for r in logged])


# ================================================================================================
# common.py, evaluation: top-5, any-student-correct, the collapse check
# ================================================================================================

def test_common_top5_is_at_least_top1_and_equals_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    for classes in (100, 3):  # below 5 classes top-5 is every image
        logits, y = torch.randn(250, classes, generator=g), torch.randint(0, classes, (250,), generator=g)
        data = SimpleNamespace(test_y=y, test_batches=lambda b: ((torch.arange(i, min(i + b, 250)), y[i:i + b])
                                                                  for i in range(0, 250, b)))
        module = nn.Identity()
        module.forward = lambda idx: {"a": logits[idx]}
        top1, _, top5 = common.evaluate(module, data, batch_size=64)
        hand = (logits.topk(min(5, classes), 1).indices == y[:, None]).any(1).float().mean().item() * 100
        assert top5["a"] == pytest.approx(hand) and top5["a"] >= top1["a"]
        assert top1["a"] == pytest.approx((logits.argmax(1) == y).float().mean().item() * 100)
        assert classes > 5 or top5["a"] == 100


def test_common_top5_is_logged_for_100_classes_and_shown_by_compare(tmp_path, monkeypatch):
    synthetic = common.synthetic
    monkeypatch.setattr(common, "synthetic", lambda: synthetic(num_classes=100))
    results = run_main(vanilla, TINY, tmp_path)
    last = read_metrics(tmp_path)[-1]
    assert set(results["final_top5"]) == {"s0", "s1", "ens", "any"}
    for head, top5 in results["final_top5"].items():
        assert last[f"top5_{head}"] == top5 and results["final"][head] <= top5 <= 100
    compare = script_module("compare")
    text = compare.table(compare.summarise({"vanilla": [{**results, "seed": 0}]}))
    header, rule, row = text.splitlines()
    assert "final top-5 per head" in header and header.count("|") == rule.count("|") == row.count("|")
    assert f"ens {results['final_top5']['ens']:.2f}" in row


class FixedHeads(nn.Module):
    """An evaluation forward that returns the same logits per head for every batch (one batch here)."""

    def __init__(self, logits, any_correct_heads=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.logits = logits
        if any_correct_heads is not None:
            self.any_correct_heads = any_correct_heads

    def forward(self, x):
        return dict(self.logits)


def one_batch(y):
    return SimpleNamespace(test_y=y, test_batches=lambda batch_size=None: iter([(torch.zeros(len(y), 3, 2, 2), y)]))


def test_common_any_correct_head_counts_an_image_when_any_listed_head_is_right(tmp_path):
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    predicted = {"leader": [0, 0, 0, 3, 0, 0], "s1": [0, 1, 0, 0, 1, 1], "s2": [1, 1, 2, 0, 0, 0],
                 "ens": [0, 1, 2, 3, 0, 1], "fused": [0, 1, 2, 3, 0, 1]}
    logits = {h: F.one_hot(torch.tensor(p), 8).float() for h, p in predicted.items()}
    # right: s1 T T F F F T, s2 F T T F T F -> any of them: T T T F T T = 5 of 6; the leader adds image 3
    top1, top_share, top5 = common.evaluate(FixedHeads(logits, ["s1", "s2"]), one_batch(y))
    assert top1["any"] == pytest.approx(100 * 5 / 6) and top1["s1"] == top1["s2"] == 50.0
    assert "any" not in top_share and top1["any"] <= top5["any"] <= 100  # no collapse check: not a network
    # without the attribute: every student head s<k> (here s1, s2; the leader, ens and fused never)
    assert common.evaluate(FixedHeads(logits), one_batch(y))[0]["any"] == pytest.approx(100 * 5 / 6)
    assert "any" not in common.evaluate(FixedHeads({"top1": logits["s1"]}), one_batch(y))[0]  # a network: no oracle
    with_leader = common.evaluate(FixedHeads(logits, ["leader", "s1", "s2"]), one_batch(y))[0]
    assert with_leader["any"] == 100.0
    # FFSD's any counts its common students, not its leader (the official ensemble_accuracy over self.models)
    assert build_method(ffsd, SMOKE + ["--students", "4"], tmp_path).any_correct_heads == ["s1", "s2", "s3"]
    # best.pt never follows `any`, and compare.py never deploys it
    assert common.best_head(nn.Linear(2, 2), {"final": {"any": 90.0, "s0": 50.0}}) == "s0"
    compare = script_module("compare")
    assert compare.deployed({"final": {"any": 90.0, "s0": 50.0, "s1": 40.0, "ens": 60.0}}) == [50.0, 40.0]


def test_common_a_run_logs_any_and_keeps_it_out_of_the_best_checkpoint(tmp_path):
    results = run_main(ffsd.main, SMOKE, tmp_path)
    record = read_metrics(tmp_path)[-1]
    assert record["top1_any"] == results["final"]["any"] >= max(results["final"]["s1"], results["final"]["s2"])
    assert "any" in results["best"] and "top_share_any" not in record and "any" not in results["collapsed"]


def test_common_collapse_signal_is_one_dominant_prediction_at_near_chance_top1(tmp_path):
    near_chance = {"s0": 20.0, "s1": 20.0, "ens": 10.0}
    assert common.collapsed_heads(near_chance, {"s0": 0.56, "s1": 0.54, "ens": 1.0}, 10) == ["s0", "ens"]
    # a student well above chance that swings to one class for an epoch (58 % of the images) is not collapsed
    assert common.collapsed_heads({"s0": 34.25}, {"s0": 0.577}, 10) == []
    assert common.collapsed_heads({"s0": 20.1}, {"s0": 0.9}, 10) == []
    assert common.collapsed_heads({"s0": 60.0}, {"s0": 0.74}, 2) == []
    assert common.collapsed_heads({"s0": 60.0}, {"s0": 0.75}, 2) == ["s0"]
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    data = SimpleNamespace(test_y=y, test_batches=lambda batch_size=None: [(torch.zeros(6, 3, 4, 4), y)])
    constant = lambda x: torch.tensor([[0.0, 1.0, 0.0]]).expand(len(x), 3)  # noqa: E731
    module = nn.Module()
    module.forward = constant
    top1, share, _ = common.evaluate(module, data)
    assert top1["top1"] == pytest.approx(100 / 3) and share["top1"] == 1.0


@pytest.fixture(scope="module")
def cifar10_real(tmp_path_factory):
    """400 train / 50 test real CIFAR-10 images per class (CIFAR10_JPEG), in the ImageFolder layout."""
    return extract_cifar10(tmp_path_factory.mktemp("cifar10_real"), {"train": 400, "test": 50})


def run_side_by_side(runs, tmp_path):
    """Run scripts as a user would, all at once, one thread each (on 2 cores, faster than one after the other
    on two threads); {name: (results.json, output)} once every run has finished."""
    procs = {name: subprocess.Popen([sys.executable, os.path.join(HERE, script), *argv, "--out-dir",
                                     str(tmp_path / name)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, cwd=HERE, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for name, (script, argv) in runs.items()}
    done = {}
    for name, proc in procs.items():
        output = proc.communicate(timeout=1200)[0]
        assert proc.returncode == 0, (name, output[-2000:])
        done[name] = json.loads((tmp_path / name / "results.json").read_text()), output
    return done


@pytest.mark.slow
def test_common_without_warmup_students_that_teach_each_other_collapse_and_the_warning_names_them(
        cifar10_real, tmp_path):
    """DML from full lr at the first step: after one epoch of 62 steps its students give most test images one
    class; independent students from the same start do not. The warning names the head and the fix."""
    argv = ["--dataset", "folder", "--data-dir", str(cifar10_real), "--limit-train", "4000", "--batch-size", "64",
            "--epochs", "1", "--lr-warmup", "0", "--arch", "resnet20", "--device", "cpu"]
    runs = run_side_by_side({"dml": ("dml.py", argv), "vanilla": ("common.py", argv)}, tmp_path)
    (collapsed, out), (independent, independent_out) = runs["dml"], runs["vanilla"]
    assert collapsed["collapsed"], out
    assert "warning: epoch 1: head s" in out and "try a longer --lr-warmup (now 0)" in out
    assert independent["collapsed"] == {} and "warning" not in independent_out


# Measured on these settings (with --limit-test 500 drawn at random, seeds 0, 1, 2): best deployable network
# minus vanilla's best, DML +3.0 / +2.0 / +4.4, FFCL -1.0 / -0.6 / +3.4, FFSD +1.8 / 0.0 / +2.4; a collapsed DML
# (no warm-up) lost 11 +- 5 points. 5 points is five times the worst shortfall seen, half what a collapse costs.
COLLAPSE_MARGIN = 5.0


@pytest.mark.slow
def test_common_with_default_warmup_no_method_collapses_on_real_cifar10(cifar10_real, tmp_path):
    """DML, FFCL (response and feature terms on) and FFSD with the default warm-up on 1,000 real images (3 of
    the 5 epochs: this 7-epoch run's first decay is at epoch 6): no collapse warning, and the best deployable
    network within COLLAPSE_MARGIN points of vanilla's best."""
    argv = ["--dataset", "folder", "--data-dir", str(cifar10_real), "--limit-train", "1000", "--batch-size", "32",
            "--epochs", "7", "--milestones", "6", "--arch", "resnet20", "--device", "cpu"]
    runs = run_side_by_side({"vanilla": ("common.py", argv), "dml": ("dml.py", argv),
                             "ffcl": ("ffcl.py", argv + ["--no-regularization"]), "ffsd": ("ffsd.py", argv)}, tmp_path)
    base_final = runs.pop("vanilla")[0]["final"]  # one run (not one per head)
    base = max(base_final[h] for h in ("s0", "s1"))
    for name, (results, output) in runs.items():
        assert results["collapsed"] == {} and "warning: epoch" not in output, (name, output[-2000:])
        best = max(v for h, v in results["final"].items() if h.startswith(("s", "leader")))
        assert best >= base - COLLAPSE_MARGIN, (name, results["final"], base)


# ================================================================================================
# common.py: checkpoints and exports
# ================================================================================================

def end_epoch(out, record, method, name="ffsd"):
    """A RunFolder's end of an epoch (`record` is the record after it) for `method`, in folder `out`."""
    args = common.make_parser().parse_args(["--out-dir", str(out), "--device", "cpu", "--quiet"])
    run = common.RunFolder(args, common.derive_settings(args), name)
    run.saved, run.steps, run.batch = {"lr": 0.1}, 1, 2
    losses = common.LossSums(1)
    losses.add(0, torch.tensor(1.0), {})
    optimizers, gen = [torch.optim.SGD(method.parameters(), lr=0.1)], torch.Generator().manual_seed(0)
    run.end_epoch(record["epoch"] - 1, losses, {}, 1.0, record, method, optimizers, gen)


def test_common_save_checkpoint_writes_best_pt_on_the_primary_heads_best_epoch(tmp_path):
    method = nn.Linear(2, 2)
    method.primary_head = "leader"
    run = {"epoch": 2, "best": {"leader": 50.0, "ens": 60.0}, "best_epoch": {"leader": 1, "ens": 2},
           "elapsed": 1.0, "final": {"leader": 40.0, "ens": 60.0}, "collapsed": {}, "changes": []}
    end_epoch(tmp_path, run, method)
    assert (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()  # ens's best, not leader's
    run["epoch"], run["best_epoch"]["leader"] = 3, 3
    end_epoch(tmp_path, run, method)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 3 and best["method"] == "ffsd" and best["args"] == {"lr": 0.1}
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "last.pt")  # a second name of the same file
    run["epoch"] = 4
    end_epoch(tmp_path, run, method)  # not a best epoch: last.pt replaced, best.pt stays epoch 3's
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 3


@pytest.mark.slow
def test_common_checkpoint_faults_keep_what_was_saved(tmp_path):
    out = tmp_path / "run"
    run_main(vanilla, TINY, out)
    before = (out / "last.pt").read_bytes()
    # an existing run is never overwritten without --resume
    status, output = run_cli("common.py", *TINY, "--out-dir", str(out))
    assert status != 0 and "already holds a run" in output
    # a checkpoint of another architecture or method is refused
    status, output = run_cli("common.py", *TINY, "--epochs", "2", "--arch", "resnet32", "--out-dir", str(out),
                             "--resume")
    assert status != 0 and "--arch resnet20" in output and "Traceback" not in output
    status, output = run_cli("dml.py", *TINY, "--epochs", "2", "--out-dir", str(out), "--resume")
    assert status != 0 and "holds a vanilla run, not a dml one" in output
    assert (out / "last.pt").read_bytes() == before
    # a corrupt checkpoint is named as such
    (out / "last.pt").write_bytes(before[: len(before) // 2])
    status, output = run_cli("common.py", *TINY, "--epochs", "2", "--out-dir", str(out), "--resume")
    assert status != 0 and "not a readable checkpoint" in output and "Traceback" not in output


def test_common_exported_student_loads_alone_and_reproduces_its_head(tmp_path):
    results = run_main(vanilla, TINY, tmp_path)
    model = common.load_backbone(str(tmp_path / "s1.pt"), "resnet20", 10)
    args = common.check_args(common.make_parser().parse_args(TINY + ["--out-dir", str(tmp_path / "x")]))
    data = common.load_data(args, torch.device("cpu"))
    assert common.evaluate(model, data)[0]["top1"] == pytest.approx(results["final"]["s1"])


def test_common_an_export_is_the_same_plain_data_in_the_copy_and_in_common(tmp_path, capsys):
    method = build_method(ffsd, ["--arch", "resnet20", "--students", "3"], tmp_path)
    exported, payload = method.export()["leader"], common.backbone_payload(method.students[0])
    assert exported.keys() == payload.keys() and exported["kind"] == "backbone"
    assert all(torch.equal(v, payload["state_dict"][k]) for k, v in exported["state_dict"].items())
    torch.save(exported, tmp_path / "leader.pt")
    assert isinstance(common.load_backbone(str(tmp_path / "leader.pt"), "resnet20", 10), common.Backbone)
    import torchvision
    own = common.as_student(torchvision.models.resnet18(num_classes=5))  # no zoo name: weights only
    torch.save(common.backbone_payload(own), tmp_path / "own.pt")
    with pytest.raises(common.UsageError, match=r"holds the weights of a Student, not of a zoo backbone"):
        common.load_backbone(str(tmp_path / "own.pt"))
    fresh = common.as_student(torchvision.models.resnet18(num_classes=5))
    fresh.load_state_dict(torch.load(tmp_path / "own.pt", weights_only=True)["state_dict"])


def test_common_an_export_copied_elsewhere_evaluates_to_the_runs_top1_and_top5_given_only_the_data(tmp_path, capsys):
    """A folder data set of 100 classes trained on a subset (--limit-train): s0.pt copied into another folder and
    evaluated with only --data-dir gives the run's final top-1 and top-5, normalised with the statistics of the
    run's subset that it carries (those of every training image differ); its class names are the folders'."""
    root = write_image_folder(tmp_path / "images", splits=(("train", 3), ("test", 1)), classes=100)
    argv = ["--dataset", "folder", "--data-dir", str(root), "--limit-train", "200", "--epochs", "1", "--batch-size",
            "50", "--arch", "resnet20", "--device", "cpu", "--workers", "1"]
    results = run_main(vanilla, argv, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "run" / "s0.pt", elsewhere / "s0.pt")
    found = script_module("evaluate").main([str(elsewhere / "s0.pt"), "--data-dir", str(root), "--device", "cpu"])
    top1, top5 = found[str(elsewhere / "s0.pt")]["s0"]
    assert top1 == pytest.approx(results["final"]["s0"]) and top5 == pytest.approx(results["final_top5"]["s0"])
    net = common.load_backbone(str(elsewhere / "s0.pt"))
    args = common.check_args(common.make_parser().parse_args(argv + ["--out-dir", str(tmp_path / "x")]))
    data = common.load_data(args, torch.device("cpu"))
    every_image = common.load_data(common.check_args(common.make_parser().parse_args(
        argv[:4] + argv[6:] + ["--out-dir", str(tmp_path / "x")])), torch.device("cpu"))
    assert net.preprocess["mean"] == data.stats[0] and net.preprocess["std"] == data.stats[1]
    assert net.preprocess["mean"] != every_image.stats[0] and net.preprocess["image_size"] == [32, 32]
    assert net.classes == sorted(f"class{c}" for c in range(100))  # the folder names, in label order
    # an image file prepared by preprocess_image is exactly the run's test input
    from PIL import Image
    first = sorted(os.listdir(root / "test" / "class7"))[0]
    x = common.preprocess_image(Image.open(root / "test" / "class7" / first), net.preprocess)
    index = [i for i, (path, _) in enumerate(common.split_folders(str(root))[2])
             if path.endswith(os.path.join("class7", first))][0]
    assert torch.equal(x, data.normalize(data.test_x[index:index + 1]))


# ================================================================================================
# common.py, the run folder: one run at a time, resume checks, faults and interrupts, checksums
# ================================================================================================

def test_common_the_default_out_dir_tells_apart_what_a_run_trains_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def out_dir(*argv, name="vanilla"):
        return common.parse_flags(name, None, list(argv) + ["--device", "cpu"])[0].out_dir
    base = ["--arch", "resnet20", "--dataset", "synthetic"]
    assert out_dir(*base) == os.path.join("runs", "vanilla_resnet20_synthetic_seed0")
    assert out_dir(*base, "--limit-train", "2000", name="dml") == os.path.join(
        "runs", "dml_resnet20_synthetic_seed0_limit2000")
    flowers = ["--dataset", "folder", "--data-dir", str(tmp_path / "flowers")]
    assert out_dir("--arch", "resnet20", *flowers) == os.path.join("runs", "vanilla_resnet20_folder-flowers_seed0")
    assert out_dir("--arch", "resnet20", *flowers, "--stream", "--image-size", "64") == os.path.join(
        "runs", "vanilla_resnet20_folder-flowers_seed0_stream_64px")


def files_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_common_a_folder_in_use_is_refused_and_a_killed_runs_lock_is_released_by_the_system(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    run_main(vanilla, SMOKE, out)
    holder = "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); " \
             "f.write('pid 4242, started 2026-12-01 10:00:00, `dml.py --epochs 200`'); f.flush(); print('held', " \
             "flush=True); time.sleep(120)"
    live = subprocess.Popen([sys.executable, "-c", holder, str(out / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "held"
        before = files_of(out)
        for argv in (["--epochs", "2", "--resume"], ["--lr", "0.05"], []):  # whatever the command: nothing touched
            err = one_line_error(capsys, lambda: vanilla(SMOKE + argv + ["--out-dir", str(out)]))
            assert (f"{out} is in use by another run (pid 4242, started 2026-12-01 10:00:00, `dml.py --epochs "
                    f"200`); wait for it to end, or pass another --out-dir") in err, err
        assert files_of(out) == before
    finally:
        live.kill()  # as a kill -9 would: the system releases its lock
        live.wait()
    run_main(vanilla, SMOKE + ["--epochs", "2", "--resume"], out)
    assert [r["epoch"] for r in common.read_metrics(out / "metrics.jsonl")] == [1, 2]
    # the lock is released when the run stops on an error after taking it: the next run takes it
    monkeypatch.setattr(common, "load_data", refuse(common.UsageError("no data today")))
    one_line_error(capsys, lambda: vanilla(SMOKE + ["--epochs", "3", "--resume", "--out-dir", str(out)]))
    monkeypatch.undo()
    run_main(vanilla, SMOKE + ["--epochs", "3", "--resume"], out)


def test_common_a_run_in_the_way_names_the_flag_that_differs(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    first = common.check_args(common.make_parser().parse_args(SMOKE + ["--out-dir", str(out)]))
    (out / "args.json").write_text(json.dumps(vars(first)))
    (out / "last.pt").write_bytes(b"a run")
    err = one_line_error(capsys, lambda: vanilla(SMOKE + ["--lr", "0.05", "--no-nesterov", "--out-dir", str(out)]))
    assert "already holds a run with --lr 0.1, --nesterov on (this command: --lr 0.05, --nesterov off)" in err, err
    err = one_line_error(capsys, lambda: vanilla(SMOKE + ["--epochs", "3", "--out-dir", str(out)]))
    assert "already holds a run; pass --resume to continue it" in err, err
    assert (out / "last.pt").read_bytes() == b"a run"


def test_common_resume_takes_the_runs_flags_refuses_others_by_name_and_says_what_more_epochs_change(tmp_path, capsys):
    out = tmp_path / "run"
    run_main(vanilla, SMOKE + ["--epochs", "2", "--lr", "0.05", "--lr-warmup", "0"], out)
    before = files_of(out)
    # the flags that change what is trained or how: each one that differs named, with both values
    err = one_line_error(capsys, lambda: vanilla(["--resume", "--out-dir", str(out), "--epochs", "4", "--lr", "0.5",
                                                  "--seed", "1", "--batch-size", "32", "--T", "3"]))
    assert (f"--resume: {out} holds a run trained with --batch-size 64, --lr 0.05, --T not given, --seed 0 but this "
            f"command gives --batch-size 32, --lr 0.5, --T 3.0, --seed 1; a resumed run keeps its flags") in err, err
    err = one_line_error(capsys, lambda: dml.main(["--resume", "--out-dir", str(out), "--epochs", "4"]))
    assert f"--resume: {out} holds a vanilla run, not a dml one" in err
    assert files_of(out) == before  # refused before anything was written
    # the same flags spelled otherwise, this machine's, --epochs: accepted; those left out are the run's
    results = run_main(vanilla, ["--resume", "--epochs", "4", "--arch", "resnet20,resnet20", "--workers", "0",
                                 "--quiet", "--device", "cpu", "--amp", "off"], out)
    said = capsys.readouterr().out
    assert (f"resumed {out / 'last.pt'} at epoch 2; changed from the run so far (results.json records it): epochs "
            f"2 -> 4; the learning-rate schedule is that of 4 epochs (milestones at epochs 2, 3), epoch 3 starts at "
            f"lr 0.005") in said, said
    assert results["changes"] == [{"epoch": 2, "epochs": [2, 4]}]
    assert results["args"]["lr"] == 0.05 and results["args"]["limit_train"] == 128 and results["args"]["quiet"]
    # what is logged is what was applied: the lr of the last step, in metrics.jsonl and in the optimizer
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["optimizers"][0]["param_groups"][0]["lr"] == pytest.approx(read_metrics(out)[-1]["lr"]) == 0.0005


def test_common_resume_checks_that_its_data_is_the_runs(tmp_path, capsys):
    first, other = write_image_folder(tmp_path / "a", splits=(("train", 4), ("test", 2))), tmp_path / "b"
    write_image_folder(other, splits=(("train", 4), ("test", 2)), seed=1)  # other images, the same classes
    argv = ["--dataset", "folder", "--arch", "resnet20", "--batch-size", "4", "--epochs", "1", "--device", "cpu",
            "--workers", "0"]
    out = tmp_path / "run"
    run_main(vanilla, argv + ["--data-dir", str(first)], out)
    identity = json.loads((out / "args.json").read_text())["data"]
    assert identity["classes"] == 3 and identity["train_images"] == 12 and identity["test_images"] == 6
    err = one_line_error(capsys, lambda: vanilla(["--resume", "--epochs", "2", "--data-dir", str(other), "--out-dir",
                                                  str(out)]))
    assert (f"--resume: the data is not what {out / 'last.pt'} was trained on (3 classes, 12 train / 6 test images, "
            f"fingerprint") in err and f"pass the run's --data-dir ({first}) with its images as they were" in err
    # the same images elsewhere (a copy on a node's local disk): the run continues
    moved = tmp_path / "moved"
    shutil.copytree(first, moved, ignore=shutil.ignore_patterns(".okd-cache.pt"))
    run_main(vanilla, ["--resume", "--epochs", "2", "--data-dir", str(moved)], out)
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]


def under_a_file(tmp_path, mp):
    (tmp_path / "x").write_text("a regular file")
    return tmp_path / "x" / "run"


def a_file(tmp_path, mp):
    (tmp_path / "run").write_text("keep me")
    return tmp_path / "run"


def refused_makedirs(error):
    def make(tmp_path, mp):
        mp.setattr(common.os, "makedirs", refuse(error(str(tmp_path / "run"))))
        return tmp_path / "run"
    return make


def refused_writes(error):
    def make(tmp_path, mp):  # the folder exists (with a file in it), but nothing can be written there
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "kept.txt").write_text("keep me")
        mp.setattr(common, "open", refuse(error(str(tmp_path / "run" / "probe"))), raising=False)
        return tmp_path / "run"
    return make


OUT_DIR_FAULTS = {  # how an output folder fails: (make it so, returning the --out-dir; what the sentence says)
    "under a regular file": (under_a_file, "a part of the path is a file, not a folder"),
    "a regular file": (a_file, "is a file, not a folder"),
    "no permission to create": (refused_makedirs(lambda p: PermissionError(13, "Permission denied", p)),
                                "permission denied"),
    "read-only file system": (refused_makedirs(lambda p: OSError(30, "Read-only file system", p)),
                              "read-only file system"),
    "read-only folder": (refused_writes(lambda p: PermissionError(13, "Permission denied", p)), "permission denied"),
    "full disk": (refused_writes(lambda p: OSError(28, "No space left on device")), "no space left on device"),
}


@pytest.mark.parametrize("fault", OUT_DIR_FAULTS)
def test_common_an_out_dir_that_cannot_be_written_stops_before_data_and_networks(tmp_path, capsys, monkeypatch, fault):
    make, reason = OUT_DIR_FAULTS[fault]
    out = make(tmp_path, monkeypatch)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(common, "load_data", refuse(AssertionError("the data was loaded first")))
    err = one_line_error(capsys, lambda: vanilla(SMOKE + ["--out-dir", str(out)]))
    assert f"--out-dir {out} " in err and reason in err, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing touched or added


class FillingFile:
    """A file on a disk that fills up after `room` bytes: every later write raises ENOSPC."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):  # flush, close, ...
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def full_disk(after, room=1000):
    """open() for a disk that fills up while the file `after` names is written (by the real torch.save, json.dump)
    the `after[1]`-th time."""
    real_open, seen = open, []

    def opened(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if after[0] in os.path.basename(str(path)) and "w" in mode:
            seen.append(path)
            if len(seen) == after[1]:
                return FillingFile(f, room)
        return f
    return opened


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "results.json"])
def test_common_a_write_that_fails_mid_run_ends_in_one_sentence_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                                        monkeypatch, where):
    out = tmp_path / "run"
    # the second epoch's last.pt (its temporary file), or results.json after the epoch
    monkeypatch.setattr(common, "open", full_disk(("last.pt.tmp", 2) if where == "checkpoint" else
                                                  ("results.json", 1), room=1000 if where == "checkpoint" else 10),
                        raising=False)
    epochs = 2 if where == "checkpoint" else 1
    err = one_line_error(capsys, lambda: vanilla(SMOKE + ["--epochs", str(epochs), "--out-dir", str(out)]), code=1)
    assert "(no space left on device" in err and (f"{out / 'last.pt'})" in err if where == "checkpoint" else True), err
    kept = 1
    assert f"the last good checkpoint {out / 'last.pt'} (epoch {kept}) is untouched" in err, err
    assert f"make room and continue with --resume --out-dir {out}" in err, err
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == kept
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # no half-written temporary file left
    monkeypatch.undo()
    if where == "checkpoint":  # the run continues from the checkpoint kept
        run_main(vanilla, SMOKE + ["--epochs", "2", "--resume"], out)
        assert [r["epoch"] for r in common.read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_common_a_finished_run_missing_an_export_is_completed_by_the_command_its_advice_gives(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(common, "open", full_disk(("s1.pt.tmp", 1)), raising=False)  # the disk fills during s1.pt
    err = one_line_error(capsys, lambda: vanilla(SMOKE + ["--out-dir", str(out)]), code=1)
    advice = f"make room and continue with --resume --out-dir {out}"
    assert err.rstrip().endswith(advice), err
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "best.pt", "last.pt", "metrics.jsonl", "run.lock",
                                                     "s0.pt"]
    before = files_of(out)
    vanilla(["--resume", "--out-dir", str(out)])  # the advice, exactly
    assert (f"{out / 'last.pt'} has trained its 1 epoch; s1.pt, results.json missing: writing s0.pt, s1.pt, "
            f"results.json (nothing is trained)") in capsys.readouterr().out
    after = files_of(out)
    assert all(after[name] == before[name] for name in ("last.pt", "best.pt", "metrics.jsonl", "s0.pt"))
    student = common.load_backbone(str(out / "s1.pt"))
    weights = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, weights[f"students.1.{k}"]) for k, v in student.state_dict().items())
    err = one_line_error(capsys, lambda: vanilla(["--resume", "--out-dir", str(out)]))  # now nothing is missing
    assert "already finished 1 epoch; raise --epochs to train further" in err


INTERRUPTED_SAVE = """
import os, signal, sys
sys.path.insert(0, {here!r})
import torch
import common
signum, out, seen = int(sys.argv[1]), sys.argv[2], []
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even where a shell ignores it
real_save = torch.save


class Interrupting:  # the file being written: the signal arrives after its first write
    def __init__(self, f):
        self.f, self.sent = f, False

    def write(self, data):
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signum)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def save(obj, f):
    seen.append(os.path.basename(f.name))
    second_last = seen.count(os.path.basename(f.name)) == 2 and ".tmp" in f.name and "last.pt" in f.name
    return real_save(obj, Interrupting(f) if second_last else f)  # epoch 2's last.pt


torch.save = save
common.main(argv={argv!r} + ["--epochs", "2", "--out-dir", out])
"""


@pytest.mark.slow
def test_common_sigterm_and_sigint_mid_save_end_in_one_sentence_with_the_checkpoint_whole(tmp_path, capsys):
    script = tmp_path / "interrupted_save.py"
    script.write_text(INTERRUPTED_SAVE.format(here=HERE, argv=SMOKE))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {name: subprocess.Popen([sys.executable, str(script), str(int(signum)), str(tmp_path / name)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, signum in (("SIGTERM", 15), ("SIGINT", 2))}
    for name, proc in runs.items():
        out, (stdout, stderr) = tmp_path / name, proc.communicate(timeout=300)
        assert proc.returncode == {"SIGTERM": 143, "SIGINT": 130}[name], stdout + stderr
        said = "Ctrl-C" if name == "SIGINT" else "SIGTERM"
        assert stderr == (f"interrupted ({said}): the last good checkpoint {out / 'last.pt'} (epoch 1) is untouched; "
                          f"continue with --resume --out-dir {out}\n"), stderr
        ckpt = common.load_checkpoint(str(out / "last.pt"))  # whole: its checksums verified; the signal came
        assert ckpt["epoch"] == 1 and common.load_checkpoint(str(out / "best.pt"))["epoch"] == 1  # in epoch 2's
        assert sorted(p.name for p in out.iterdir()) == ["args.json", "best.pt", "last.pt", "metrics.jsonl",
                                                         "run.lock"]
    # the resumed run trains epoch 2 again, exactly as the interrupted one had, and finishes
    out = tmp_path / "SIGTERM"
    interrupted = without_timing(read_metrics(out))
    run_main(vanilla, ["--resume"], out)
    assert without_timing(common.read_metrics(out / "metrics.jsonl")) == interrupted


def test_common_leftovers_of_killed_writes_and_a_cut_metrics_line_are_cleared_when_the_run_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    run_main(vanilla, SMOKE, out)
    (out / "last.pt.tmp").write_bytes(b"half a checkpoint")  # a save killed by SIGKILL
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lr": 0.0')  # the second epoch's line, cut by a kill
    run_main(vanilla, ["--resume", "--epochs", "3"], out)
    assert [r["epoch"] for r in common.read_metrics(out / "metrics.jsonl")] == [1, 2, 3]  # the cut line skipped
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4  # and kept: nothing written is removed
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def damage(path, at=None):
    """4 KiB of zeros inside the largest record of a torch archive (its bytes, not its directory)."""
    import zipfile
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.file_size)
    data = bytearray(path.read_bytes())
    start = record.header_offset + 512 if at is None else at
    data[start:start + 4096] = bytes(4096)
    path.write_bytes(data)
    return record.filename


def test_common_a_damaged_checkpoint_or_export_is_refused_in_one_sentence_naming_it(tmp_path, capsys):
    out = tmp_path / "run"
    run_main(vanilla, SMOKE, out)
    part = damage(out / "last.pt")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1  # torch alone loads it
    err = one_line_error(capsys, lambda: vanilla(["--resume", "--epochs", "2", "--out-dir", str(out)]))
    assert err == (f"error: {out / 'last.pt'} is damaged: its part {part} no longer matches the checksum written "
                   f"with it (a disk, copy or transfer fault); replace it with a good copy\n"), err
    evaluate = script_module("evaluate")
    err = usage_error(capsys, lambda: evaluate.main([str(out / "last.pt")]))
    assert f"{out / 'last.pt'} is damaged" in err
    damage(out / "s0.pt")
    with pytest.raises(common.UsageError, match=re.escape(f"{out / 's0.pt'} is damaged")):
        common.load_backbone(str(out / "s0.pt"))
    # a file in torch's format before 1.6 has no checksums: it loads, and that is said once
    torch.save(common.backbone_payload(common.build_model("resnet20", 10)), tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    for _ in range(2):
        assert isinstance(common.load_backbone(str(tmp_path / "old.pt")), common.Backbone)
    assert f"note: {tmp_path / 'old.pt'} has no checksums" in capsys.readouterr().out


KILLED_AT_BEST = """
import os, signal, sys
sys.path.insert(0, {here!r})
import common
calls = []


def evaluate(module, data, settings=None, batch_size=None):  # every epoch better than the last: each one best.pt
    calls.append(1)
    top1 = {{"s0": 10.0 * len(calls), "s1": 10.0, "ens": 10.0 * len(calls)}}
    return top1, {{h: 0.1 for h in top1}}, dict(top1)


def same_file(src, dst):  # killed (as by an OOM kill) between epoch 2's last.pt and its best.pt
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real_same_file(src, dst)


common.evaluate, real_same_file, common.same_file = evaluate, common.same_file, same_file
common.main(argv={argv!r} + ["--epochs", "2", "--out-dir", sys.argv[1]])
"""


@pytest.mark.slow
def test_common_a_kill_between_last_pt_and_best_pt_is_mended_by_the_resume(tmp_path, capsys):
    """#34 class 1: every file a run writes matches what results.json says, or is named stale and rewritten."""
    script, out = tmp_path / "killed.py", tmp_path / "run"
    script.write_text(KILLED_AT_BEST.format(here=HERE, argv=SMOKE))
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2  # epoch 2 was the best ...
    assert torch.load(out / "best.pt", weights_only=True)["epoch"] == 1  # ... but best.pt is epoch 1's
    results = run_main(vanilla, ["--resume"], out)
    assert f"{out / 'best.pt'} held epoch 1, not the run's best epoch 2: written again from last.pt" in \
        capsys.readouterr().out
    assert results["best_epoch"]["ens"] == 2 == torch.load(out / "best.pt", weights_only=True)["epoch"]


class StopsAt(common.Vanilla):
    """Vanilla interrupted (as by Ctrl-C) when its epoch `at` (from 0) ends, before that epoch is saved."""
    at = 3

    def epoch_end(self, epoch, data):
        if epoch == self.at:
            raise common.Interrupted(signal.SIGINT)


def test_common_a_resume_that_changes_what_results_depend_on_records_each_change(tmp_path, capsys):
    """#34 class 2 (--resume --epochs N, N the epochs done) and 6 (another precision, another torch): said, and
    recorded with its epoch in args.json and results.json."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit):  # started for 5 epochs, interrupted after 3
        common.main("vanilla", None, lambda args, data: StopsAt(common.build_students(args, data)),
                    SMOKE + ["--epochs", "5", "--out-dir", str(out)])
    results = run_main(vanilla, ["--resume", "--epochs", "3"], out)
    said = capsys.readouterr().out
    assert "has trained its 3 epochs; changed from the run so far (results.json records it): epochs 5 -> 3" in said
    assert results["changes"] == [{"epoch": 3, "epochs": [5, 3]}] == json.loads((out / "args.json").read_text())[
        "changes"] and results["epochs"] == 3
    ckpt = torch.load(out / "last.pt", weights_only=True)  # as if torch 2.11 had trained it
    ckpt["args"]["torch"] = "2.11.0"
    common.atomic_save(ckpt, str(out / "last.pt"))
    results = run_main(vanilla, ["--resume", "--epochs", "4", "--amp", "bf16"], out)
    assert results["changes"][1] == {"epoch": 3, "epochs": [3, 4], "bf16": [False, True],
                                     "torch": ["2.11.0", str(torch.__version__)]}


def test_common_streamed_images_edited_in_place_are_refused_on_resume(tmp_path, capsys):
    """#34 class 3: a streamed data set's identity covers its files' bytes, not only their names."""
    root = write_image_folder(tmp_path / "d", splits=(("train", 2), ("val", 1)))
    argv = STREAMED + ["--data-dir", str(root), "--arch", "resnet20", "--image-size", "32", "--batch-size", "2"]
    run_main(vanilla, argv, tmp_path / "run")
    first, second = root / "train" / "class0" / "0.jpg", root / "train" / "class1" / "0.jpg"
    first.write_bytes(second.read_bytes())  # another image under the same name
    err = one_line_error(capsys, lambda: vanilla(["--resume", "--epochs", "2", "--out-dir", str(tmp_path / "run")]))
    assert "--resume: the data is not what" in err, err


def write_ppm_folder(root):
    """2 classes x (3 train, 2 test) random 32x32 PPM images: raw pixels, so an edited image keeps its size."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / f"c{c}" /
                                                                                        f"{i}.ppm")
    return root


def test_common_a_folder_edited_keeping_sizes_and_times_is_decoded_again_and_refused_on_resume(tmp_path, capsys):
    """#34 class 4: what `cp -p`, `rsync -a` or a tarball extracted again leave: other bytes, the same sizes and
    modification times. The cache is decoded again and the resumed run refused."""
    import numpy as np
    from PIL import Image
    root = write_ppm_folder(tmp_path / "d")
    argv = ["--dataset", "folder", "--data-dir", str(root), "--arch", "resnet20", "--batch-size", "4", "--epochs",
            "1", "--device", "cpu", "--workers", "0"]
    run_main(vanilla, argv, tmp_path / "run")
    image = root / "train" / "c0" / "0.ppm"
    stat = image.stat()
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert image.stat().st_size == stat.st_size and image.stat().st_mtime_ns == stat.st_mtime_ns
    capsys.readouterr()
    x = common.load_folder(str(root), 0)[0]
    assert f"the images in {root} changed since" in capsys.readouterr().out  # decoded again, not read stale
    assert torch.equal(x[0], torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1))
    err = one_line_error(capsys, lambda: vanilla(["--resume", "--epochs", "2", "--out-dir", str(tmp_path / "run")]))
    assert "--resume: the data is not what" in err, err


RESUMED_KILLED = """
import sys
sys.path.insert(0, {here!r})
import common
common.main(argv=["--resume", "--epochs", "4", "--out-dir", sys.argv[1]])
"""


@pytest.mark.slow
def test_common_kill_9_of_a_resumed_run_in_its_first_epoch_loses_no_epoch(tmp_path, capsys):
    """#33 item 5: metrics.jsonl is appended, never rewritten: a resumed run killed before its first epoch ends
    keeps every line of the epochs before, and the next resume continues them."""
    out = tmp_path / "run"
    run_main(vanilla, SMOKE + ["--epochs", "2", "--limit-train", "512"], out)
    before = (out / "metrics.jsonl").read_text()
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "common.py"), "--resume", "--epochs", "4",
                             "--out-dir", str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:
        if line.startswith("resumed "):
            break
    proc.kill()
    proc.wait()
    assert (out / "metrics.jsonl").read_text() == before
    run_main(vanilla, ["--resume", "--epochs", "4"], out)
    assert [r["epoch"] for r in common.read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def interrupt(method, epoch, data):
    raise common.Interrupted(signal.SIGINT)


class StopsPretraining(common.Vanilla):
    """FFCL's pre-training interrupted (Ctrl-C) when its epoch `at` ends."""
    at = 1

    def epoch_end(self, epoch, data):
        if epoch == self.at:
            raise common.Interrupted(signal.SIGINT)


@pytest.mark.slow
def test_ffcl_interrupted_in_or_after_its_pre_training_continues_by_either_command(tmp_path, capsys, monkeypatch):
    """#34 class 7: no dead end. FFCL interrupted during its --pretrain-epochs, or just after them, continues from
    the pre-training's checkpoint by the command it is told (--resume) and by the same command again."""
    argv = SMOKE + ["--pretrain-epochs", "2", "--epochs", "1"]
    for again in (["--resume"], []):
        out = tmp_path / f"run{len(again)}"
        monkeypatch.setattr(common, "Vanilla", StopsPretraining)  # pre-training stops at the end of its epoch 2
        with pytest.raises(SystemExit) as stop:
            ffcl.main(argv + ["--out-dir", str(out)])
        assert stop.value.code == 130
        assert (f"interrupted (Ctrl-C): the last good checkpoint {out / 'pretrain' / 'last.pt'} (epoch 1) is "
                f"untouched; continue with --resume --out-dir {out}") in capsys.readouterr().err
        monkeypatch.undo()
        results = run_main(ffcl.main, (argv if not again else []) + again, out)
        assert f"resumed {out / 'pretrain' / 'last.pt'} at epoch 1" in capsys.readouterr().out
        assert [r["epoch"] for r in common.read_metrics(out / "pretrain" / "metrics.jsonl")] == [1, 2]
        assert results["epochs"] == 1 and "fused" in results["final"]
    # just after the pre-training (FFCL's own first epoch interrupted): the pre-training is kept and reused
    out = tmp_path / "after"
    monkeypatch.setattr(ffcl.FFCL, "epoch_end", interrupt, raising=False)
    with pytest.raises(SystemExit):
        ffcl.main(argv + ["--out-dir", str(out)])
    assert f"{out / 'pretrain' / 'last.pt'} (epoch 2) is untouched" in capsys.readouterr().err
    monkeypatch.undo()
    run_main(ffcl.main, ["--resume"], out)
    assert [r["epoch"] for r in common.read_metrics(out / "pretrain" / "metrics.jsonl")] == [1, 2]  # not again


def test_ffcl_pretrained_networks_moved_elsewhere_are_the_same_run(tmp_path, capsys):
    """#34 class 8: a flag naming files (--pretrained) may name the same bytes elsewhere on --resume."""
    run_main(vanilla, SMOKE, tmp_path / "peers")
    argv = SMOKE + ["--pretrained", f"{tmp_path / 'peers' / 's0.pt'},{tmp_path / 'peers' / 's1.pt'}"]
    run_main(ffcl.main, argv, tmp_path / "run")
    shutil.move(tmp_path / "peers", tmp_path / "moved")
    moved = f"{tmp_path / 'moved' / 's0.pt'},{tmp_path / 'moved' / 's1.pt'}"
    results = run_main(ffcl.main, ["--resume", "--epochs", "2", "--pretrained", moved], tmp_path / "run")
    assert results["epochs"] == 2
    swapped = f"{tmp_path / 'moved' / 's1.pt'},{tmp_path / 'moved' / 's0.pt'}"  # other bytes for each peer
    err = one_line_error(capsys, lambda: ffcl.main(["--resume", "--epochs", "3", "--pretrained", swapped,
                                                    "--out-dir", str(tmp_path / "run")]))
    assert "holds a run trained with --pretrained" in err, err


def test_common_a_torchvision_built_for_another_torch_ends_in_one_sentence(tmp_path, capsys, monkeypatch):
    """#34 class 13: pip can pair a torch with a torchvision built for another; importing it then fails inside
    torchvision (`operator torchvision::nms does not exist`). One sentence names both versions and the fix."""
    import builtins
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    err = one_line_error(capsys, lambda: dml.main(SMOKE + ["--arch", "resnet18", "--out-dir", str(tmp_path / "r")]))
    assert f"does not work with torch {torch.__version__} (operator torchvision::nms does not exist); install a " \
           f"matching pair" in err, err


def test_common_a_tarball_of_an_image_folder_is_a_data_dir_in_every_script(tmp_path, capsys, monkeypatch):
    """#36 item 3: wherever --data-dir takes a folder of images it takes the tarball of that folder (extracted once
    into ~/.cache/okd, named by its bytes); any other file is refused in one sentence."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = write_image_folder(tmp_path / "images", splits=(("train", 4), ("test", 2)))
    with tarfile.open(tmp_path / "images.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="images")
    argv = ["--dataset", "folder", "--arch", "resnet20", "--batch-size", "4", "--epochs", "1", "--device", "cpu",
            "--workers", "0"]
    from_tarball = run_main(dml.main, argv + ["--data-dir", str(tmp_path / "images.tar.gz")], tmp_path / "a")
    assert "extracting" in capsys.readouterr().out and from_tarball["args"]["data"]["train_images"] == 12
    from_folder = run_main(dml.main, argv + ["--data-dir", str(root)], tmp_path / "b")
    assert from_folder["args"]["data"] == from_tarball["args"]["data"] and from_folder["final"] == from_tarball["final"]
    found = script_module("evaluate").main([str(tmp_path / "a" / "s0.pt"), "--data-dir",
                                            str(tmp_path / "images.tar.gz")])
    assert found[str(tmp_path / "a" / "s0.pt")]["s0"][0] == pytest.approx(from_tarball["final"]["s0"])
    (tmp_path / "notes.txt").write_text("not a tarball")
    err = one_line_error(capsys, lambda: dml.main(argv + ["--data-dir", str(tmp_path / "notes.txt"), "--out-dir",
                                                          str(tmp_path / "c")]))
    assert f"--data-dir {tmp_path / 'notes.txt'} is a file but not a .tar(.gz) of an image folder" in err, err


def test_common_sentences_name_the_real_cause(tmp_path, capsys):
    """#36 item 4: a folder holding another method's run names that method; a file that is not a network or a
    checkpoint (a run's results.json) is named for what it is."""
    run_main(ffsd.main, SMOKE, tmp_path / "run")
    err = one_line_error(capsys, lambda: dml.main(SMOKE + ["--out-dir", str(tmp_path / "run")]))
    assert f"{tmp_path / 'run'} already holds a ffsd run, not a dml one" in err, err
    evaluate = script_module("evaluate")
    err = usage_error(capsys, lambda: evaluate.main([str(tmp_path / "run" / "results.json")]))
    assert "is a JSON file (a run's record, such as results.json), not a saved network or checkpoint" in err, err
    with pytest.raises(common.UsageError, match="is a ffsd run's checkpoint"):
        common.load_backbone(str(tmp_path / "run" / "last.pt"))


class DeletesItsFolder(common.Vanilla):
    """Vanilla whose folder is deleted after its first checkpoint (by a user, a clean-up job)."""

    def epoch_end(self, epoch, data):
        if epoch == 1:
            shutil.rmtree(self.out_dir)


@pytest.mark.slow
def test_common_each_wrong_place_or_closed_output_is_named_for_what_it_is(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run_main(vanilla, SMOKE, run)
    (tmp_path / "a-file").write_text("not a folder")
    for dataset in ("folder", "cifar10"):
        argv = SMOKE + ["--dataset", dataset, "--data-dir", str(tmp_path / "a-file"), "--out-dir",
                        str(tmp_path / dataset)]
        err = one_line_error(capsys, lambda: vanilla(argv))
        assert f"--data-dir {tmp_path / 'a-file'} is a file" in err and ("not a folder" in err if dataset == "cifar10"
                                                                         else "not a .tar(.gz)" in err), err
    evaluate = script_module("evaluate")
    err = usage_error(capsys, lambda: evaluate.main([str(run)]))
    assert f"{run} is a folder; pass one of its files: best.pt, last.pt, s0.pt, s1.pt" in err, err
    common.atomic_save(common.backbone_payload(TinyStudent()), str(tmp_path / "own.pt"))  # a student of one's own
    err = usage_error(capsys, lambda: evaluate.main([str(tmp_path / "own.pt"), "--dataset", "synthetic"]))
    assert "holds the weights of a TinyStudent, a network of your own that evaluate.py cannot rebuild" in err, err
    # FFCL pre-training into another method's folder: refused before the data is even loaded
    monkeypatch.setattr(common, "load_data", refuse(AssertionError("the data was loaded")))
    err = one_line_error(capsys, lambda: ffcl.main(SMOKE + ["--pretrain-epochs", "1", "--epochs", "2", "--resume",
                                                           "--out-dir", str(run)]))
    assert f"{run} holds a vanilla run, not a ffcl one" in err and not (run / "pretrain").exists()
    monkeypatch.undo()
    # the folder deleted during the run, after its first checkpoint

    def build(args, data):
        method = DeletesItsFolder(common.build_students(args, data))
        method.out_dir = args.out_dir
        return method
    gone = tmp_path / "gone"
    err = one_line_error(capsys, lambda: common.main("deleting", None, build, SMOKE + ["--epochs", "3", "--out-dir",
                                                                                      str(gone)]), code=1)
    assert f"the folder {gone} was removed during the run, its checkpoints with it; start the run again" in err, err
    # the run's output closed by the program reading it (`| head -1`)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "common.py"), *SMOKE, "--epochs", "2", "--lr-warmup",
                             "0.5", "--out-dir", str(tmp_path / "head")], stdout=subprocess.PIPE,  # one line first
                            stderr=subprocess.PIPE, text=True,
                            cwd=HERE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().startswith("vanilla: ")
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 141
    assert stderr.startswith("stopped: the output of this run was closed by the program reading it (such as `| head`;")
    assert re.search(rf"the last good checkpoint {re.escape(str(tmp_path / 'head' / 'last.pt'))} \(epoch [12]\) is "
                     rf"untouched; continue with --resume", stderr), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr


# ================================================================================================
# common.py: backbones
# ================================================================================================

@pytest.mark.parametrize("arch,params,shapes", [
    ("resnet32", 0.47e6, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet20", 0.28e6, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("wrn_16_2", 0.70e6, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    ("wrn_40_2", 2.25e6, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    ("resnet18", 11.2e6, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
])
def test_common_backbone_shapes_and_parameter_counts(arch, params, shapes):
    model = common.build_model(arch, 100)
    logits, features = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100)
    assert [tuple(f.shape[1:]) for f in features] == shapes
    assert abs(common.count_params(model) - params) / params < 0.02


@pytest.mark.parametrize("arch", ["mobilenetv2", "shufflenetv2", "vgg16", "resnet34", "resnet56", "wrn_28_10"])
def test_common_every_zoo_name_runs_at_cifar_size(arch):
    logits, features = common.build_model(arch, 10)(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and len(features) >= 3
    # stages run one by one give the same result as forward
    model = common.build_model(arch, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    h = x
    for stage in model.stages:
        h = stage(h)
    assert torch.allclose(model.classifier(h), model(x)[0], atol=1e-5)


@pytest.mark.parametrize("name,arch,stages", [
    ("resnet18", "resnet18", [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]),
    ("resnet50", "resnet50", [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]),
    ("mobilenetv2", "mobilenetv2", [(24, 56, 56), (32, 28, 28), (96, 14, 14), (1280, 7, 7)]),
    ("densenet121", "densenet121", [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (1024, 7, 7)]),
])
def test_common_torchvision_backbones_at_imagenet_shape_expose_their_stages(name, arch, stages):
    import torchvision
    model = common.build_model(arch, 1000, 224).eval()
    logits, features = model(torch.randn(1, 3, 224, 224))
    assert logits.shape == (1, 1000) and [tuple(f.shape[1:]) for f in features] == stages
    reference = getattr(torchvision.models, "mobilenet_v2" if name == "mobilenetv2" else name)(num_classes=1000)
    assert common.count_params(model) == common.count_params(reference)  # torchvision's definition, unchanged
    assert common.build_model(arch, 10, 32)(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)  # CIFAR names work


def test_common_as_student_finds_the_stage_outputs_of_torchvision_classifiers():
    import torchvision
    net = common.as_student(torchvision.models.resnet18(num_classes=5))
    assert net.stage_nodes == ["relu", "layer1", "layer2", "layer3", "layer4"]
    logits, features = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and [f.shape[1] for f in features] == [64, 64, 128, 256, 512]
    net = common.as_student(torchvision.models.mobilenet_v2(num_classes=5))
    assert [f.shape[-1] for f in net(torch.randn(2, 3, 32, 32))[1]] == [16, 8, 4, 2, 1]  # one map per size


# ================================================================================================
# common.py, data: in memory
# ================================================================================================

def test_common_balanced_subsets_and_hold_out():
    xtr, ytr, xte, yte, nc = common.synthetic(n_train=500, n_test=100)
    data = common.Data(xtr, ytr, xte, yte, nc, torch.device("cpu"))
    hx, hy = data.hold_out(5)
    assert torch.equal(torch.bincount(hy, minlength=nc), torch.full((nc,), 5))
    assert len(data.train_y) == 450
    # held-out images are no longer in the training set
    train_set = {bytes(t.numpy()) for t in data.train_x}
    assert not any(bytes(t.numpy()) in train_set for t in hx)


def test_common_a_constant_colour_channel_is_named_as_the_cause_and_normalises_to_finite_values(capsys):
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    x[:, 2] = 0  # no blue anywhere
    data = common.Data(x, torch.arange(8) % 2, x[:2], torch.arange(2), 2, torch.device("cpu"))
    assert ("note: the blue channel of the training images has one value in every pixel (standard deviation 0): it "
            "is normalised with a standard deviation of 1 instead") in capsys.readouterr().out
    assert torch.isfinite(data.normalize(x)).all() and data.std[0, 2].item() == 255


@pytest.mark.slow
def test_common_synthetic_data_is_learnable(tmp_path):
    results = run_main(vanilla, ["--dataset", "synthetic", "--limit-train", "1000", "--limit-test", "500",
                                 "--epochs", "2", "--batch-size", "50", "--arch", "resnet20", "--students", "1",
                                 "--device", "cpu"], tmp_path)
    assert results["final"]["s0"] > 50  # chance is 10 %


# ================================================================================================
# common.py, data: streamed (ImageNet layout)
# ================================================================================================

# one step on 6 training images (2 per class), batch 4, the 6 val images; no worker processes
STREAMED = ["--dataset", "imagenet", "--epochs", "1", "--batch-size", "4", "--limit-train", "6", "--workers", "0",
            "--device", "cpu"]


def streamed(root, **kwargs):
    """root's train/ and val/ as StreamedData on the CPU."""
    return common.StreamedData(*common.split_folders(str(root), ("val",)), torch.device("cpu"), **kwargs)


def test_common_streamed_data_yields_independent_views_and_seeded_batches(tiny_imagenet):
    data = streamed(tiny_imagenet, image_size=64, workers=0)
    assert data.num_classes == 3 and len(data.train_y) == 24 and len(data.test_y) == 6
    g = torch.Generator().manual_seed(0)
    before = torch.get_rng_state()
    (views, y), = list(data.train_batches(g, 8, 1, num_views=2))
    assert torch.equal(torch.get_rng_state(), before)  # augmentation leaves the main process's RNG alone
    assert [v.shape for v in views] == [(8, 3, 64, 64)] * 2 and y.shape == (8,)
    assert not torch.equal(views[0], views[1])  # each student its own augmentation of the same images
    again, = list(data.train_batches(torch.Generator().manual_seed(0), 8, 1, num_views=2))
    assert all(torch.equal(a, b) for a, b in zip(views + [y], again[0] + [again[1]]))
    (x, yt), = list(data.test_batches())
    assert x.shape == (6, 3, 64, 64) and torch.equal(yt, data.test_y)
    data.hold_out(2)
    assert len(data.train_y) == 18 and sum(len(y) for _, y in data.holdout_batches()) == 6


@pytest.mark.slow
def test_common_streamed_imagefolder_trains_and_a_resumed_run_continues_exactly(tiny_imagenet, tmp_path):
    argv = STREAMED + ["--data-dir", str(tiny_imagenet), "--arch", "resnet18", "--image-size", "64",
                       "--limit-train", "12", "--milestones", "1"]
    run_main(vanilla, argv + ["--epochs", "2"], tmp_path / "a")
    run_main(vanilla, argv + ["--workers", "1"], tmp_path / "b")  # 1 epoch, decoded in a worker process ...
    run_main(vanilla, argv + ["--epochs", "2", "--resume"], tmp_path / "b")  # ... + resume to 2
    a, b = (without_timing(read_metrics(tmp_path / d)) for d in "ab")
    assert len(a) == 2 and a == b
    model = common.load_backbone(str(tmp_path / "a" / "s0.pt"), "resnet18", 3)
    assert model.image_size == 64 and model.stages[0][0][0].kernel_size == (7, 7)  # the ImageNet shape


# what a method needs beyond STREAMED (the others: nothing)
STREAMED_FLAGS = {"kdcl": ["--holdout-per-class", "1"], "ffcl": ["--pretrain-epochs", "1"],
                  "ffsd": ["--students", "3"], "mkb_cl": ["--embed-dim", "3136"]}  # MKB: stage 1 is 28 x 28 at 224 px


@pytest.mark.slow
@pytest.mark.parametrize("name", common.METHODS)
def test_common_every_method_trains_streamed_resnet18_at_224(tiny_imagenet, tmp_path, name):
    main = vanilla if name == "vanilla" else importlib.import_module(name).main
    argv = STREAMED + ["--data-dir", str(tiny_imagenet), "--arch", "resnet18"] + STREAMED_FLAGS.get(name, [])
    results = run_main(main, argv, tmp_path)
    assert results["args"]["input_size"] == [224, 224] and all(0 <= a <= 100 for a in results["final"].values())


@pytest.mark.parametrize("make,argv,expected", [
    (lambda d: (d / "val").rename(d / "test"), [], "must hold train/<class>/* and val/<class>/*"),
    (lambda d: (d / "train" / "class3").mkdir(), [], "class folder"),
    (lambda d: (d / "train" / "class0" / "0.jpg").write_bytes(b"not a jpeg"), [], "cannot read image"),
    (lambda d: (d / "train" / "class0" / "0.jpg").write_bytes(b"not a jpeg"), ["--workers", "1"], "cannot read image"),
    (lambda d: None, ["--stream", "--dataset", "cifar10"], "--stream is for folder data sets"),
    (lambda d: None, ["--dataset", "synthetic", "--image-size", "64"], "--image-size is for streamed data"),
])
def test_common_bad_streamed_input_ends_in_one_sentence(tmp_path, capsys, make, argv, expected):
    root = write_image_folder(tmp_path / "d", splits=(("train", 2), ("val", 1)))
    make(root)
    err = usage_error(capsys, lambda: vanilla(["--dataset", "imagenet", "--data-dir", str(root), "--arch", "resnet20",
                                               "--image-size", "32", "--batch-size", "2", "--epochs", "1", "--device",
                                               "cpu", "--workers", "0", "--out-dir", str(tmp_path / "run")] + argv))
    assert expected in err


# ================================================================================================
# common.py, data: image folders and their cache
# ================================================================================================

@pytest.fixture(scope="module")
def cifar10_subset(tmp_path_factory):
    """30 train / 10 test real CIFAR-10 images per class (CIFAR10_JPEG), in the ImageFolder layout."""
    return extract_cifar10(tmp_path_factory.mktemp("cifar10"), {"train": 30, "test": 10})


@pytest.mark.slow
def test_common_folder_dataset_on_real_cifar10_trains_and_caches(cifar10_subset, tmp_path):
    results = run_main(vanilla, ["--dataset", "folder", "--data-dir", str(cifar10_subset), "--epochs", "1",
                                 "--batch-size", "50", "--arch", "resnet20", "--device", "cpu"], tmp_path / "a")
    assert set(results["final"]) == {"s0", "s1", "ens", "any"}
    assert os.path.exists(cifar10_subset / ".okd-cache.pt")
    first = common.load_folder(str(cifar10_subset), 1)
    assert first[0].shape == (300, 3, 32, 32) and first[2].shape == (100, 3, 32, 32) and first[4] == 10


def empty_class(root):
    (root / "train" / "class3").mkdir()
    (root / "test" / "class3").mkdir()
    write_image_folder(root / "extra", splits=(("test", 1),))  # test/class3 gets an image: only train's is empty
    (root / "extra" / "test" / "class0" / "0.jpg").rename(root / "test" / "class3" / "0.jpg")


def no_images(root):
    for image in list(root.rglob("*.jpg")):
        image.rename(image.with_suffix(".txt"))


FOLDER_FAULTS = {  # a malformed folder data set: (make it so, the sentence's words)
    "no class folders": (lambda d: [shutil.rmtree(c) for c in (d / "train").iterdir()], "holds no class folders"),
    "an empty class folder": (empty_class, "the class folder class3 in"),
    "other classes in test": (lambda d: (d / "test" / "class2").rename(d / "test" / "class9"),
                              "must have the same class folders, but only"),
    "no images at all": (no_images, "holds no images in its class folders"),
    "an unreadable image": (lambda d: (d / "train" / "class1" / "0.jpg").write_bytes(b"not a jpeg"),
                            "cannot read image"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["in_memory", "streamed"])
@pytest.mark.parametrize("fault", FOLDER_FAULTS)
def test_common_a_malformed_folder_data_set_ends_in_one_sentence_on_either_path(tmp_path, capsys, fault, stream):
    root = write_image_folder(tmp_path / "d", splits=(("train", 2), ("test", 1)))
    make, expected = FOLDER_FAULTS[fault]
    make(root)
    out = tmp_path / "run"
    argv = ["--dataset", "folder", "--data-dir", str(root), "--arch", "resnet20", "--batch-size", "2", "--epochs",
            "1", "--device", "cpu", "--workers", "0", "--out-dir", str(out)] + (["--stream", "--image-size", "32"]
                                                                                 if stream else [])
    err = one_line_error(capsys, lambda: vanilla(argv))
    assert expected in err, err
    if not (stream and fault == "an unreadable image"):  # found before the run starts: no folder left behind
        assert not out.exists()


def write_png_folder(root, seed=0):
    """2 classes x (3 train, 2 test) random 32x32 PNG images (lossless: decoded exactly as written)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", 3), ("test", 2)):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_common_a_folder_data_set_edited_in_place_is_decoded_again(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    root = write_png_folder(tmp_path / "d")
    first = common.load_folder(str(root), 1)
    assert (root / ".okd-cache.pt").exists()
    assert all(torch.equal(a, b) for a, b in zip(common.load_folder(str(root), 1)[:4], first[:4]))
    assert "decoding" not in capsys.readouterr().out  # the cache, unchanged files: not decoded again
    for image in root.rglob("*.png"):  # every image replaced by its negative, under the same name
        Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    inverted = common.load_folder(str(root), 1)
    assert (f"note: the images in {root} changed since {root / '.okd-cache.pt'} was decoded from them; decoding them "
            f"again") in capsys.readouterr().out
    assert torch.equal(inverted[0], 255 - first[0]) and torch.equal(inverted[2], 255 - first[2])
    assert torch.equal(inverted[1], first[1])
    # a cache written before its files' bytes were recorded, or a damaged one: decoded again, said
    old = torch.load(root / ".okd-cache.pt", weights_only=True)
    del old["identity"]
    torch.save(old, root / ".okd-cache.pt")
    common.load_folder(str(root), 1)
    assert "changed since" in capsys.readouterr().out
    cache = bytearray((root / ".okd-cache.pt").read_bytes())
    cache[len(cache) // 2:len(cache) // 2 + 64] = bytes(64)
    (root / ".okd-cache.pt").write_bytes(cache)
    assert torch.equal(common.load_folder(str(root), 1)[0], inverted[0])
    assert "no longer matches the checksum written with it (a disk, copy or transfer fault); decoding the images " \
           "again" in capsys.readouterr().out


# ================================================================================================
# common.py, data: the papers' other data sets (CINIC-10, MNIST, STL-10, CIFAR offline)
# ================================================================================================

def test_common_cinic10_is_a_folder_in_memory_or_streamed(tmp_path):
    root = write_image_folder(tmp_path / "cinic", splits=(("train", 4), ("valid", 2), ("test", 2)), classes=10)
    for stream in ([], ["--stream", "--image-size", "32"]):
        args = common.check_args(common.make_parser().parse_args(
            ["--dataset", "cinic10", "--data-dir", str(root), "--workers", "0", "--out-dir", str(tmp_path / "r")]
            + stream))
        data = common.load_data(args, torch.device("cpu"))
        assert data.num_classes == 10 and len(data.train_y) == 40 and len(data.test_y) == 20
        assert type(data) is (common.StreamedData if stream else common.Data) and data.image_size == (32, 32)


def test_common_mnist_from_torchvision_files_is_grey_in_three_channels_at_32px(tmp_path):
    """MNIST in torchvision's own on-disk format (idx files, written here: no download)."""
    import numpy as np
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        header = np.array([2051, n, 28, 28], ">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([2049, n], ">i4").tobytes() + labels.tobytes())
    results = run_main(vanilla, ["--dataset", "mnist", "--data-dir", str(tmp_path), "--arch", "resnet20",
                                 "--epochs", "1", "--batch-size", "25", "--device", "cpu"], tmp_path / "run")
    assert results["args"]["input_size"] == [32, 32]
    x = common.load_other(SimpleNamespace(dataset="mnist", data_dir=str(tmp_path)))[0][0]
    assert x.shape == (50, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2]) and x[:, :, :2].sum() == 0


def test_common_stl10_through_torchvision_at_96px(tmp_path, monkeypatch):
    """STL-10 in torchvision's binary layout (written here); its md5 check is patched out (the files differ)."""
    import numpy as np
    import torchvision
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        (folder / f"{split}_X.bin").write_bytes(rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tobytes())
        (folder / f"{split}_y.bin").write_bytes((np.arange(n) % 10 + 1).astype(np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)
    train_x, train_y, test_x, test_y, nc, _ = common.load_other(SimpleNamespace(dataset="stl10",
                                                                                data_dir=str(tmp_path)))[0]
    assert train_x.shape == (20, 3, 96, 96) and test_x.shape == (10, 3, 96, 96) and nc == 10
    assert sorted(train_y.tolist()) == sorted(list(range(10)) * 2)
    model = common.build_model("resnet18", 10, 96)  # 96 px is ImageNet-shaped: 24, 12, 6, 3 px stages
    assert [f.shape[-1] for f in model(common.Data(train_x, train_y, test_x, test_y, nc, "cpu").normalize(
        train_x[:2]))[1]] == [24, 12, 6, 3]


def test_common_offline_cifar_without_a_local_copy_says_what_to_pass(tmp_path, capsys, monkeypatch):
    import urllib.error
    import torchvision

    def no_network(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    err = usage_error(capsys, lambda: vanilla(["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
                                               "--epochs", "1", "--device", "cpu", "--out-dir", str(tmp_path / "run")]))
    assert "CIFAR10 is not in" in err and "--dataset folder --data-dir DIR" in err


# ================================================================================================
# common.py, data: augmentation
# ================================================================================================

def test_common_augment_is_a_shifted_window_of_the_padded_image_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = common.augment(x, g)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        windows = {(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)
                   if torch.equal(out[i], (padded[i, :, dy:dy + 32, dx:dx + 32].flip(2) if flip
                                           else padded[i, :, dy:dy + 32, dx:dx + 32]))}
        assert windows, f"sample {i} is not a crop of its padded image"
        flips += all(f for _, _, f in windows)
    assert 10 < flips < 54  # about half are mirrored
    assert not torch.equal(common.augment(x, g), common.augment(x, g))  # each call (student view) differs


def augment_before(x, generator, pad=4, flip=True, rank=0, world=1):
    """common.augment as it was before --augment and --pad-mode: what a default run must still draw."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b * world, 1, 1, 1), generator=generator)[rank::world]
    dx = torch.randint(0, 2 * pad + 1, (b * world, 1, 1, 1), generator=generator)[rank::world]
    rows = dy + torch.arange(h).view(1, 1, h, 1)
    cols = dx + torch.arange(w).view(1, 1, 1, w)
    crops = padded[torch.arange(b).view(b, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]
    if not flip:
        return crops
    flips = torch.rand(b * world, 1, 1, 1, generator=generator)[rank::world] < 0.5
    return torch.where(flips, crops.flip(3), crops)


def windows(padded, size):
    return [padded[:, dy:dy + size, dx:dx + size] for dy in range(padded.shape[1] - size + 1)
            for dx in range(padded.shape[2] - size + 1)]


def test_common_default_augmentation_draws_as_before_and_the_new_modes_do_what_they_say():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    for rank, world, flip in ((0, 1, True), (1, 2, True), (0, 1, False)):
        g_new, g_old = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for _ in range(2):  # and the generators stay in step
            assert torch.equal(common.augment(x, g_new, 1, flip, rank, world), augment_before(x, g_old, 1, flip,
                                                                                               rank, world))
    # a default run's data: crop + flip of the zero-padded image, batch by batch as before
    args = common.make_parser().parse_args(["--dataset", "synthetic", "--limit-train", "100", "--limit-test", "50"])
    data = common.load_data(args, torch.device("cpu"))
    assert (data.crop, data.flip, data.pad_mode) == (True, True, "zeros")
    views, y = next(data.train_batches(torch.Generator().manual_seed(0), 20, 1))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(100, generator=g)[:20]
    assert torch.equal(views[0], data.normalize(augment_before(data.train_x[idx], g, data.pad)))
    # --augment none: the images as they are; crop: shifted windows, never mirrored; reflect: of the mirror image
    for augment, pad_mode in (("none", "zeros"), ("crop", "zeros"), ("crop+flip", "reflect")):
        data = common.load_data(SimpleNamespace(**{**vars(args), "augment": augment, "pad_mode": pad_mode}),
                                torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        views, _ = next(data.train_batches(g, 20, 1))
        idx = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:20]
        images = data.train_x[idx]
        out = (views[0] * data.std + data.mean).round().to(torch.uint8)
        if augment == "none":
            assert torch.equal(out, images)
            continue
        mode = "constant" if pad_mode == "zeros" else "reflect"
        padded = F.pad(images.float(), (4, 4, 4, 4), mode=mode).to(torch.uint8)
        mirrored = 0
        for i in range(20):
            plain = any(torch.equal(out[i], w) for w in windows(padded[i], 32))
            flipped = any(torch.equal(out[i], w.flip(2)) for w in windows(padded[i], 32))
            assert plain or flipped, (augment, pad_mode, i)
            mirrored += flipped and not plain
        assert mirrored == 0 if augment == "crop" else mirrored > 0


def test_common_augment_flag_reaches_the_streamed_path(tiny_imagenet):
    kinds = {a: streamed(tiny_imagenet, image_size=32, workers=0, augment=a).train_set.transform
             for a in ("none", "crop", "crop+flip")}
    assert "RandomResizedCrop" not in repr(kinds["none"]) and "CenterCrop" in repr(kinds["none"])
    assert "RandomResizedCrop" in repr(kinds["crop"]) and "Flip" not in repr(kinds["crop"])
    assert "RandomHorizontalFlip" in repr(kinds["crop+flip"])


# ================================================================================================
# common.py: torchrun, several processes on CPU (gloo), the same scripts and flags
# ================================================================================================

def test_common_process_shares_of_a_batch_make_up_the_single_process_batch(tiny_imagenet):
    """Process r of N gets images r, r + N, ... of every global batch, augmented exactly as one process
    would augment them, and every process's generator ends where one process's does."""
    cpu = torch.device("cpu")
    x, y, *_ = common.synthetic(n_train=60, n_test=10)
    in_memory = common.Data(x, y, x[:10], y[:10], 10, cpu)
    for data, batch, steps in ((in_memory, 12, 4), (streamed(tiny_imagenet, image_size=64, workers=0), 6, 3)):
        def epoch(rank, world):
            gen = torch.Generator().manual_seed(0)
            return list(data.train_batches(gen, batch, steps, 2, rank, world)), gen.get_state()
        whole, state = epoch(0, 1)
        for world in (2, 3):
            shares = [epoch(rank, world) for rank in range(world)]
            for step, (views, labels) in enumerate(whole):
                for rank, (share, share_state) in enumerate(shares):
                    share_views, share_labels = share[step]
                    assert len(share_labels) == batch // world
                    assert torch.equal(share_labels, labels[rank::world])
                    assert all(torch.equal(a, b[rank::world]) for a, b in zip(share_views, views))
                    assert torch.equal(share_state, state)


@pytest.mark.parametrize("argv,expected", [
    (["--sync-bn"], "--sync-bn needs GPUs"),
    (["--batch-size", "63"], "--batch-size 63 is the global batch: it must split into equal shares"),
])
def test_common_flags_torchrun_cannot_honour_end_in_one_sentence_said_by_rank_0(
        tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):  # the same mistake on every process: only rank 0 says it
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as stop:
            vanilla(SMOKE + argv + ["--out-dir", str(tmp_path / "run")])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert (expected in err and len(err.strip().splitlines()) == 1) if rank == "0" else err == "", err


def test_common_a_lost_process_points_to_where_its_cause_is_said(tmp_path, capsys, monkeypatch):
    """Under torchrun, a process that finds another gone (its own error line, or torchrun's report when it was
    killed and printed nothing) says where the cause is, without claiming a message that may not exist."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(common, "start_processes", lambda args: False)
    monkeypatch.setattr(common, "agree", lambda args, work: work())
    monkeypatch.setattr(common, "fit", refuse(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed "
                                                           "by peer [127.0.0.1]:29500")))
    err = one_line_error(capsys, lambda: vanilla(DDP + ["--out-dir", str(tmp_path / "run")]), code=1)
    assert "another process of this run stopped (its error line, or torchrun's report" in err
    assert "above" not in err and f"--resume --out-dir {tmp_path / 'run'}" in err


DDP_FLAGS = {"kdcl": ["--holdout-per-class", "2"], "ffcl": ["--pretrain-epochs", "1"]}  # the others: none
DDP_RUNS = {  # run name: (script, its flags): every method, then kdcl_linear and ffcl_rk check that DDP finds every
    # parameter used, and a 1-process checkpoint continued on 2 processes
    **{name: ("common" if name == "vanilla" else name, DDP_FLAGS.get(name, [])) for name in common.METHODS},
    "kdcl_linear": ("kdcl", ["--ensemble", "linear", "--no-icl"]),
    "ffcl_rk": ("ffcl", ["--no-feature", "--no-regularization"]),
    "resumed": ("common", ["--resume", "--epochs", "2"]),
}


class FailsOnRank1(common.Vanilla):
    """Vanilla whose second epoch fails on rank 1 only: a NaN loss, a crash, or a kill (SIGKILL)."""

    def __init__(self, students, how):
        super().__init__(students)
        self.how, self.epoch = how, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def forward(self, views, y=None):
        out = super().forward(views, y)
        if self.training and self.epoch == 1 and torch.distributed.is_initialized() \
                and torch.distributed.get_rank() == 1:
            if self.how == "crash":
                raise RuntimeError("rank 1 crashes")
            if self.how == "kill":  # ended from outside: the process prints nothing
                os.kill(os.getpid(), 9)
            loss, parts = out
            parts["ce_s1"] = parts["ce_s1"] * float("nan")
            return loss + parts["ce_s1"], parts
        return out


def torchrun_driver(mode, out):
    """Run by the tests below under torchrun, in every process. `every`: each run of DDP_RUNS through its
    script's main(), saving what this process trained on and its parameters after each training epoch
    (before rank 0's state is shared) to OUT/<run>/rank<r>.pt. `nan`, `crash`: a run that fails on rank 1."""
    import importlib
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    if mode != "every":
        build = lambda args, data: FailsOnRank1(common.build_students(args, data), mode)  # noqa: E731
        common.main("failing", None, build, DDP + ["--epochs", "3", "--out-dir", out])  # exits on the failure
        return
    real_batches, real_epoch = common.Data.train_batches, common.train_epoch
    seen, params = [], []

    def counted_batches(self, *args, **kw):
        for views, y in real_batches(self, *args, **kw):
            seen.append(len(y))
            yield views, y

    def recorded_epoch(step_fn, *args, **kw):
        result = real_epoch(step_fn, *args, **kw)
        params.append({n: p.detach().clone() for n, p in step_fn.module.named_parameters()})
        return result

    common.Data.train_batches, common.train_epoch = counted_batches, recorded_epoch
    for name, (script, flags) in DDP_RUNS.items():
        seen.clear(), params.clear()
        importlib.import_module(script).main(argv=DDP + flags + ["--out-dir", os.path.join(out, name)])
        torch.save({"images": sum(seen), "params": params}, os.path.join(out, name, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_common_torchrun_with_one_process_takes_the_distributed_path(tmp_path):
    """`torchrun --nproc_per_node=1` (one GPU) runs the process group and DistributedDataParallel, as N do."""
    status, output = torchrun("common.py", *DDP, "--out-dir", str(tmp_path), nproc=1)
    assert status == 0, output[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["args"]["distributed"] and results["device"].startswith("1 x cpu")


@pytest.mark.slow
def test_common_a_second_torchrun_launch_into_a_folder_in_use_stops_every_rank_at_once(tmp_path):
    """#33 item 5: every rank learns that rank 0 was refused the folder (no rank left waiting for it); only rank 0
    says it."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(300)",
                               str(out / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        import time
        start = time.perf_counter()
        status, output = torchrun("common.py", *DDP, "--out-dir", str(out))
        seconds = time.perf_counter() - start
    finally:
        holder.kill()
        holder.wait()
    assert status != 0 and output.count(f"{out} is in use by another run") == 1, output[-3000:]
    assert seconds < 25, seconds  # the rank waiting for rank 0 used to give up after 30 s


@pytest.mark.slow
def test_common_nproc_per_node_launches_the_processes_and_ends_them_in_one_sentence(tmp_path):
    """#34 class 12: `--nproc-per-node N` starts the command in N processes with torchrun's launcher; Ctrl-C (the
    terminal's SIGINT to the whole group) ends them all in rank 0's one sentence, exit status 130, without torchrun's
    SignalException traceback; a refusal ends in one sentence, exit status 2; the same run continues on 1."""
    out = tmp_path / "run"
    argv = [sys.executable, os.path.join(HERE, "common.py"), "--nproc-per-node", "2", *DDP, "--epochs", "300",
            "--quiet", "--out-dir", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it
    for line in proc.stdout:
        if line.startswith("epoch 1/300"):
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, rest
    assert rest.strip().splitlines()[-1].startswith("interrupted (Ctrl-C): the last good checkpoint") and \
        "Traceback" not in rest and rest.count("interrupted") == 1, rest
    refused = subprocess.run(argv[:-2] + ["--lr", "0.5", "--out-dir", str(out)], capture_output=True, text=True,
                             cwd=HERE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    said = (refused.stdout + refused.stderr).strip().splitlines()
    assert refused.returncode == 2 and len(said) == 1 and "already holds a run with --lr 0.1" in said[0], said
    results = run_main(vanilla, ["--resume", "--epochs", "2", "--nproc-per-node", "1"], out)
    assert results["epochs"] == 2


@pytest.mark.slow
def test_common_torchrun_trains_every_method_on_two_processes_and_resumes_across_process_counts(tmp_path):
    run_main(vanilla, DDP, tmp_path / "resumed")  # 1 process, 1 epoch: continued to 2 on 2 processes
    status, output = torchrun(__file__, "every", str(tmp_path))
    assert status == 0, output[-3000:]
    for name in DDP_RUNS:
        run = tmp_path / name
        assert (run / "results.json").exists(), name
        assert sorted(r["epoch"] for r in read_metrics(run)) == ([1, 2] if name == "resumed" else [1])
        ranks = [torch.load(run / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
        held_out = 20 if name == "kdcl" else 0  # KDCL General's 2 images per class never trained on
        epochs = 2 if name == "ffcl" else 1  # FFCL's pre-training epoch, then its own
        images = epochs * (160 - held_out) // 32 * 32  # 5 (KDCL: 4) steps of the global batch of 32 an epoch
        assert [r["images"] for r in ranks] == [images // 2] * 2, name  # the global batch split, not repeated
        assert len(ranks[0]["params"]) == epochs
        for after_0, after_1 in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
            assert after_0.keys() == after_1.keys()
            assert all(torch.equal(after_0[k], after_1[k]) for k in after_0), name  # the same after each epoch
    results = json.loads((tmp_path / "vanilla" / "results.json").read_text())
    assert results["args"]["world_size"] == 2 and results["device"].startswith("2 x cpu")
    # a checkpoint written by 2 processes continues in 1
    run_main(vanilla, DDP + ["--resume", "--epochs", "2"], tmp_path / "vanilla")
    assert [r["epoch"] for r in read_metrics(tmp_path / "vanilla")] == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nan", "crash", "kill"])
def test_common_a_failure_on_one_process_ends_every_process_and_keeps_the_checkpoint(tmp_path, how):
    status, output = torchrun(__file__, how, str(tmp_path), timeout=300)
    assert status != 0
    if how == "nan":  # found by both processes together: one sentence, from rank 0
        errors = [line for line in output.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and "'ce_s1' became non-finite at epoch 2, step 1" in errors[0], output[-3000:]
    elif how == "crash":
        assert "rank 1 crashes" in output
    else:  # a killed process prints nothing: torchrun's report says how it ended, and no line points elsewhere
        ours = [line for line in output.splitlines() if line.startswith("error")]
        assert "SIGKILL" in output and not any("above" in line for line in ours), output[-3000:]
    assert "2 processes, each cpu" in output  # the header says how many processes run
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "results.json").exists()
    # the run continues with --resume (here in one process, where nothing fails)
    build = lambda args, data: FailsOnRank1(common.build_students(args, data), how)  # noqa: E731
    common.main("failing", None, build, DDP + ["--epochs", "3", "--out-dir", str(tmp_path), "--resume"])
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


# ================================================================================================
# common.py: flags and recipes
# ================================================================================================

@pytest.mark.parametrize("argv,expected", [
    (["--workers", "-1"], "--workers must be 0 or more, got -1"),
    (["--lr", "-1"], "--lr must be a positive number, got -1"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--gamma", "0"], "--gamma must be a positive number, got 0"),
    (["--wd", "-0.1"], "--wd must be a non-negative number, got -0.1"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1"),
    (["--image-size", "8"], "--image-size must be at least 16 (pixels), got 8"),
])
def test_common_a_bad_flag_value_is_named_alone(tmp_path, capsys, argv, expected):
    err = one_line_error(capsys, lambda: vanilla(SMOKE + argv + ["--out-dir", str(tmp_path / "run")]))
    assert expected in err
    named = {f for f in ("--workers", "--lr", "--gamma", "--wd", "--momentum", "--image-size") if f in err}
    assert named == {argv[0]}, err  # no flag the user did not give


def test_common_help_gives_each_default_once():
    text = " ".join(common.make_parser().format_help().split())
    for flag in ("--image-size", "--workers", "--out-dir"):
        help_line = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert help_line.count("(default: ") == 1 and "(default: None)" not in help_line, help_line
    assert "(default: 224)" in text and "(default: runs/<method>_<arch>_<dataset>_seed<seed>" in text


@pytest.mark.parametrize("argv,message", [(["--momentum", "0"], "--no-nesterov"),
                                          (["--lr", "nan"], "--lr"),
                                          (["--wd", "inf"], "--wd"),
                                          (["--T", "nan"], "--T")])
def test_common_optimizer_refusals_end_in_one_sentence(tmp_path, capsys, argv, message):
    assert message in usage_error(capsys, lambda: dml.main(TINY + argv + ["--out-dir", str(tmp_path)]))


def test_common_plain_sgd_with_momentum_0_trains(tmp_path):
    args = method_args(dml, ["--momentum", "0", "--no-nesterov"], tmp_path)
    sgd, = common.make_optimizers(build_method(dml, ["--arch", "resnet20"], tmp_path), args)
    assert sgd.defaults["momentum"] == 0 and not sgd.defaults["nesterov"]


@pytest.mark.slow
def test_common_a_recipe_sets_defaults_an_explicit_flag_beats_it_and_both_are_recorded(tmp_path):
    saved = run_main(dml.main, ["--recipe", "paper", *TINY, "--milestones", "0.5"], tmp_path)
    args = json.loads((tmp_path / "args.json").read_text())
    recipe = common.recipe_values(dml.RECIPES["paper"])
    assert args["lr_warmup"] == recipe["lr_warmup"] == 0 and args["wd"] == recipe["wd"]  # from the recipe
    assert args["epochs"] == 1 and args["milestones"] == "0.5" and args["arch"] == "resnet20"  # explicit flags win
    assert args["recipe"] == "paper" and "--milestones 60,120,180" in args["recipe_flags"]
    assert "--milestones 60,120,180" in args["recipe_overridden"] and "--lr-warmup 0" not in args["recipe_overridden"]
    assert saved["args"]["recipe_flags"] == args["recipe_flags"]  # results.json carries them too


def test_common_help_shows_the_recipes_values_as_defaults_and_lists_every_recipe(capsys):
    with pytest.raises(SystemExit):
        ffsd.main(["--recipe", "paper", "--help"])
    text = capsys.readouterr().out
    assert "training epochs (default: 300)" in text and "(default: 150,225)" in text
    assert "  paper-imagenet\n    paper, Table III (ResNet-18): --arch resnet18\n" in text  # each value by its source
    assert "--students 3 --dataset imagenet --epochs 90" in " ".join(text.split())
    with pytest.raises(SystemExit):
        ffsd.main(["--help"])
    assert "training epochs (default: 200)" in capsys.readouterr().out  # without --recipe: the project's defaults


def test_common_an_unknown_recipe_ends_in_one_sentence(capsys):
    with pytest.raises(SystemExit) as e:
        ffsd.main(["--recipe", "imagenet"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "error: unknown recipe 'imagenet'; choose from paper, paper-imagenet"


def recipe_by_source(values):
    return {"one source": values}


@pytest.mark.slow
def test_common_baseline_trains_vanilla_with_the_scripts_recipe_and_its_shared_flags_only(tmp_path, capsys):
    """`<method>.py --recipe R --baseline` is the paper's baseline: vanilla's independent students, recorded as
    vanilla, with the recipe's shared flags; --T and the method's own flags (from the recipe or given) are ignored."""
    dests = set(vars(script_parser().parse_args([])))
    for module in METHOD_MODULES:
        for recipe in map(common.recipe_values, module.RECIPES.values()):
            assert common.recipe_values(common.baseline_recipe(recipe_by_source(recipe))) == {
                k: v for k, v in recipe.items() if k in dests and k != "T"}
    baseline = common.recipe_values(common.baseline_recipe(ffsd.RECIPES["paper"]))
    assert baseline["epochs"] == 300 and "fusion_wd" not in baseline and "T" not in baseline
    results = run_main(ffsd.main, ["--recipe", "paper", "--baseline", *TINY, "--sd-lr", "0.5", "--T", "4"], tmp_path)
    args = results["args"]
    assert results["method"] == "vanilla"
    assert set(results["final"]) == {"s0", "s1", "s2", "ens", "any"}  # the recipe's 3 students
    assert args["baseline"] and args["recipe"] == "paper" and args["T"] is None and "sd_lr" not in args
    assert args["milestones"] == "150,225" and args["wd"] == 1e-4 and args["epochs"] == 1  # the recipe's; TINY's
    assert "--milestones 150,225" in args["recipe_flags"] and not any("--T" in f or "sd-lr" in f
                                                                      for f in args["recipe_flags"])
    assert json.loads((tmp_path / "args.json").read_text()) == {**args, "changes": []}
    err = usage_error(capsys, lambda: vanilla(["--recipe", "ffsd"]))  # common.py has no recipes: it says where they are
    assert ("unknown recipe 'ffsd'; this script has none (a paper's baseline: <method>.py --recipe paper --baseline)"
            in err)


# ================================================================================================
# common.py: errors, each a user can cause ending in one sentence and a non-zero exit
# ================================================================================================

@pytest.mark.slow
@pytest.mark.parametrize("argv,expected", [
    (["--arch", "resnet33"], "unknown architecture 'resnet33'; choose from resnet20"),
    (["--arch", "resnet20,wrn_16_2,resnet32", "--students", "2"], "--arch lists 3 architectures but --students is 2"),
    (["--dataset", "folder", "--data-dir", "/nonexistent/dir"], "--data-dir /nonexistent/dir does not exist"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--limit-train", "5"], "--limit-train 5 is below the number of classes"),
    (["--resume"], "holds no run to continue"),
    (["--device", "cuda:0"], "no CUDA device"),
    (["--dataset", "imagenet21k"], "invalid choice"),
])
def test_common_bad_input_ends_in_one_sentence(tmp_path, argv, expected):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, output = run_cli("common.py", *TINY, "--out-dir", str(tmp_path / "run"), *argv)
    assert status != 0
    assert expected in output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1


def test_common_an_optimizer_refusal_the_checks_miss_still_ends_in_one_sentence(tmp_path):
    args = method_args(ffsd, ["--arch", "resnet20"], tmp_path)
    method = build_method(ffsd, ["--arch", "resnet20"], tmp_path)
    method.sd_lr = -1.0  # what torch.optim.Adam refuses with a ValueError
    with pytest.raises(common.UsageError, match="optimizer refuses"):
        common.make_optimizers(method, args)


def test_common_out_of_memory_ends_in_one_sentence_naming_the_batch_size(tmp_path, capsys, monkeypatch):
    """torch's OutOfMemoryError is a RuntimeError: it is told apart before the other RuntimeErrors, so a full GPU
    ends the run in its sentence, not a traceback."""
    monkeypatch.setattr(common, "train_epoch", refuse(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")))
    err = one_line_error(capsys, lambda: vanilla(SMOKE + ["--out-dir", str(tmp_path / "run")]))
    assert "error: out of memory on cpu at --batch-size 64; lower it (and --lr with it), or use more GPUs" in err


# ================================================================================================
# dml.py: DML
# ================================================================================================

def test_dml_mutual_kd_matches_formula_and_is_zero_for_identical_students():
    z, _ = random_logits(3, 8, 5, seed=3)
    logits = list(z)
    terms = dml.mutual_kd(logits, T=1.0)
    for k in range(3):
        ref = 0.0
        for j in range(3):
            if j != k:
                for b in range(8):
                    p, q = softmax_loop(z[j, b]), softmax_loop(z[k, b])
                    ref += sum(pc * math.log(pc / qc) for pc, qc in zip(p, q)) / 8 / 2  # 1/(K-1), K=3
        assert terms[k].item() == pytest.approx(ref, rel=1e-5)
        assert terms[k].item() > 1e-3
    same = dml.mutual_kd([z[0], z[0].clone(), z[0].clone()], T=1.0)
    assert all(abs(t.item()) < 1e-6 for t in same)


def test_dml_method_loss_zero_for_identical_students_positive_otherwise():
    x, y = tiny_batch()
    a = TinyStudent(seed=0)
    method = dml.DML([a, copy.deepcopy(a)], T=1.0, image_size=(4, 4)).train()
    loss, parts = method([x], y)
    assert parts["kd_s0"].item() == pytest.approx(0, abs=1e-7) and parts["kd_s1"].item() == pytest.approx(0, abs=1e-7)
    assert loss.item() == pytest.approx((parts["ce_s0"] + parts["ce_s1"]).item(), rel=1e-6)
    method = dml.DML([TinyStudent(seed=0), TinyStudent(seed=1)], T=1.0, image_size=(4, 4)).train()
    _, parts = method([x], y)
    assert parts["kd_s0"].item() > 1e-4 and parts["kd_s1"].item() > 1e-4


def test_dml_gradients_do_not_reach_the_peer():
    x, y = tiny_batch()
    method = dml.DML([TinyStudent(seed=0), TinyStudent(seed=1), TinyStudent(seed=2)], image_size=(4, 4)).train()
    check_kd_gradient_stays_with_student(method, [x], y)


@pytest.mark.slow
def test_dml_end_to_end_three_mixed_students(tmp_path):
    results = run_main(dml.main, TINY + ["--arch", "resnet20,wrn_16_2,resnet20", "--students", "3"], tmp_path)
    check_heads(results, ("s0", "s1", "s2", "ens"))
    assert all((tmp_path / f"s{k}.pt").exists() for k in range(3))
    assert common.load_backbone(str(tmp_path / "s1.pt")).arch == "wrn_16_2"
    record = read_metrics(tmp_path)[-1]
    assert {"ce_s0", "kd_s0", "ce_s2", "kd_s2"} <= set(record) and record["kd_s0"] > 0
    assert json.load(open(tmp_path / "args.json"))["T"] == 1.0


def test_dml_one_student_is_a_usage_error(tmp_path, capsys):
    message = usage_error(capsys, lambda: dml.main(TINY + ["--students", "1", "--out-dir", str(tmp_path)]))
    assert "at least two students" in message
    # as a user runs it: one sentence, no traceback, non-zero status
    status, output = run_cli("dml.py", *TINY, "--students", "1", "--out-dir", str(tmp_path / "cli"))
    output = output.strip()
    assert status != 0 and "at least two students" in output
    assert "Traceback" not in output and len(output.splitlines()) == 1
    args = SimpleNamespace(students=1, archs=["resnet20"], T=1.0)
    with pytest.raises(common.UsageError):
        dml.build(args, None)


# ================================================================================================
# kdcl.py: KDCL
# ================================================================================================

@pytest.mark.parametrize("K", [2, 3])
def test_kdcl_min_logit_matches_eq_6_7(K):
    z, y = random_logits(K, 16, 7, seed=K)
    z = z.round()  # small integers: many exact ties between students
    z[1, :4] = z[0, :4]  # identical students on some samples
    out = kdcl.min_logit(z, y)
    for b in range(16):
        for j in range(7):
            ref = min(float(z[i, b, j] - z[i, b, y[b]]) for i in range(K))  # Eq. 6, then Eq. 7
            assert out[b, j].item() == pytest.approx(ref, abs=1e-6)
        assert out[b, y[b]].item() == 0.0  # the target logit is 0 after the shift


@pytest.mark.parametrize("K", [2, 3])
def test_kdcl_naive_matches_eq_4_per_sample(K):
    z, y = random_logits(K, 32, 6, seed=10 + K)
    z[1, :5] = z[0, :5]  # exact ties: identical logits
    z[K - 1, 5:10] = z[0, 5:10] + 2.5  # CE ties with different logits (a constant shift)
    out = kdcl.naive(z, y)
    picked_different = 0
    for b in range(32):
        ces = [ce_loop(z[i, b], y[b]) for i in range(K)]
        best = min(ces)
        winners = [i for i in range(K) if ces[i] <= best + 1e-5]
        assert any(torch.equal(out[b], z[i, b]) for i in winners), b
        if len(winners) == 1:
            assert torch.equal(out[b], z[winners[0], b])
            picked_different += winners[0] != 0
    assert picked_different > 0  # the test would notice "always student 0"


def brute_force_linear(z, y, steps):
    """min over a simplex grid with `steps` divisions of CE(sum_i a_i z_i, y) (Eq. 5), in float64."""
    K = z.shape[0]
    z = z.double()
    grid = torch.tensor([c for c in itertools.product(range(steps + 1), repeat=K - 1) if sum(c) <= steps],
                        dtype=torch.float64) / steps
    alphas = torch.cat([grid, 1 - grid.sum(1, keepdim=True)], 1)
    best = math.inf
    for chunk in alphas.split(4096):
        s = torch.einsum("mk,kbc->mbc", chunk, z)
        ce = (s.logsumexp(2) - s.gather(2, y.view(1, -1, 1).expand(len(chunk), -1, 1)).squeeze(2)).mean(1)
        best = min(best, ce.min().item())
    return best


def linear_problems(K):
    # random students of different scales, correlated students, and students good on disjoint samples
    # (an interior optimum)
    yield random_logits(K, 64, 10, seed=100 + K, scale=1.0)
    yield random_logits(K, 64, 10, seed=200 + K, scale=8.0)
    z, y = random_logits(K, 64, 10, seed=300 + K)
    z = 0.9 * z[:1] + 0.1 * z  # highly correlated students
    yield z, y
    z, y = random_logits(K, 64, 10, seed=400 + K, scale=2.0)
    for k in range(K):
        rows = torch.arange(64)[torch.arange(64) % K == k]
        z[k, rows, y[rows]] += 4.0
    yield z, y


@pytest.mark.parametrize("K,steps", [(2, 10000), (3, 300)])
def test_kdcl_linear_reaches_brute_force_optimum(K, steps):
    for z, y in linear_problems(K):
        a = kdcl.linear_weights(z, y)
        assert a.min() >= 0 and a.sum().item() == pytest.approx(1, abs=1e-5)
        z_t = kdcl.linear(z, y)
        ours = sum(ce_loop(z_t[b], y[b]) for b in range(len(y))) / len(y)
        ref = brute_force_linear(z, y, steps)
        assert ours <= ref + 1e-3, (ours, ref)
        # the teacher is exactly sum_i a_i z_i (Eq. 5)
        assert torch.allclose(z_t, sum(a[i] * z[i] for i in range(K)), atol=1e-5)


def test_kdcl_linear_interior_optimum_is_not_a_vertex():
    z, y = list(linear_problems(2))[-1]
    a = kdcl.linear_weights(z, y)
    assert 0.05 < a[0].item() < 0.95  # each student is best on half the samples: a true mixture


def general_weights_loop(p):
    """Eq. 8-11 with explicit loops and an explicit inverse."""
    K, N = len(p), len(p[0])
    C = [[sum((p[i][k] - 1) * (p[j][k] - 1) for k in range(N)) / N for j in range(K)] for i in range(K)]
    Cinv = torch.linalg.inv(torch.tensor(C, dtype=torch.float64)).tolist()
    total = sum(Cinv[i][j] for i in range(K) for j in range(K))
    return [sum(Cinv[k][j] for j in range(K)) / total for k in range(K)]


@pytest.mark.parametrize("K", [2, 3])
def test_kdcl_general_weights_match_eq_11(K):
    g = torch.Generator().manual_seed(K)
    # students of different quality, errors partly independent: Eq. 11's optimum lies inside the simplex
    p = torch.rand(K, 200, generator=g) ** torch.tensor([0.25, 0.35, 0.3][:K]).view(K, 1)
    ref = general_weights_loop(p.double().tolist())
    assert min(ref) > 0
    w = kdcl.general_weights(p)
    assert w.tolist() == pytest.approx(ref, abs=1e-4)
    assert w.sum().item() == pytest.approx(1, abs=1e-6)
    assert w[0] > w[1]  # the student with the smaller error gets the larger weight


def test_kdcl_general_weights_stay_on_the_simplex():
    # student 1 is student 0 slightly worse: Eq. 11 alone gives student 1 a negative weight
    g = torch.Generator().manual_seed(0)
    p0 = torch.rand(300, generator=g) * 0.5 + 0.5
    p = torch.stack([p0, p0 * 0.97, torch.rand(300, generator=g)])
    assert min(general_weights_loop(p.double().tolist())) < 0
    w = kdcl.general_weights(p)
    assert w.min() >= 0 and w.sum().item() == pytest.approx(1, abs=1e-6)
    e = p.double() - 1
    C = e @ e.T / e.shape[1]
    ours = (w.double() @ C @ w.double()).item()
    n = 200
    grid = torch.tensor([(i, j) for i in range(n + 1) for j in range(n + 1 - i)], dtype=torch.float64) / n
    W = torch.cat([grid, 1 - grid.sum(1, keepdim=True)], 1)
    brute = torch.einsum("mi,ij,mj->m", W, C, W).min().item()
    assert ours <= brute + 1e-9  # Eq. 9's minimum on the simplex


@pytest.mark.parametrize("p", [torch.full((1, 50), 0.7), torch.ones(1, 50), torch.rand(1, 50)])
def test_kdcl_general_weights_survive_singular_covariance(p):
    w = kdcl.general_weights(p.repeat(3, 1))  # identical students: C has rank <= 1
    assert torch.isfinite(w).all()
    assert w.tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)


@pytest.mark.parametrize("K", [2, 3])
def test_kdcl_general_teacher_is_weighted_average_of_distributions(K):
    z, y = random_logits(K, 8, 5, seed=7)
    w = torch.softmax(torch.randn(K), 0)
    w_zero = w.clone()
    w_zero[0] = 0.0
    w_zero /= w_zero.sum()
    for weights in (w, w_zero):
        log_p = kdcl.general(z, weights, T=2.0)
        for b in range(8):
            probs = [softmax_loop(z[i, b], T=2.0) for i in range(K)]
            ref = [sum(weights[i].item() * probs[i][c] for i in range(K)) for c in range(5)]
            assert log_p[b].exp().tolist() == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("ensemble", ["naive", "linear", "minlogit", "general"])
def test_kdcl_gradients_do_not_reach_the_teacher(ensemble):
    x, y = tiny_batch()
    students = [TinyStudent(seed=0), TinyStudent(seed=1), TinyStudent(seed=2)]
    method = kdcl.KDCL(students, ensemble=ensemble, icl=True, T=2.0, lambda_kd=1.0, image_size=(4, 4)).train()
    views = [x, x + 0.1, x - 0.1]
    check_kd_gradient_stays_with_student(method, views, y)


def test_kdcl_icl_feeds_each_student_its_own_view():
    x, y = tiny_batch()
    views = [x, x + 1, x + 2]
    method = kdcl.KDCL([TinyStudent(seed=i) for i in range(3)], icl=True, image_size=(4, 4)).train()
    assert method.num_views == 3
    method(views, y)
    for i, s in enumerate(method.students):
        assert s.last_input is views[i]
    method = kdcl.KDCL([TinyStudent(seed=i) for i in range(3)], icl=False, image_size=(4, 4)).train()
    assert method.num_views == 1
    method(views[:1], y)
    assert all(s.last_input is views[0] for s in method.students)


def test_kdcl_kd_uses_the_chosen_teacher():
    x, y = tiny_batch()
    students = [TinyStudent(seed=0), TinyStudent(seed=1)]
    method = kdcl.KDCL(students, ensemble="minlogit", icl=False, T=2.0, lambda_kd=0.5, image_size=(4, 4)).train()
    _, parts = method([x], y)
    z = torch.stack([s(x)[0] for s in students]).detach()
    ref = 0.5 * kdcl.kd_loss(z[1], kdcl.min_logit(z, y), 2.0)
    assert parts["kd_s1"].item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ["naive", "linear", "minlogit", "general"])
@pytest.mark.parametrize("icl", ["--icl", "--no-icl"])
def test_kdcl_end_to_end(tmp_path, ensemble, icl):
    results = run_main(kdcl.main, SMOKE + ["--students", "2", "--ensemble", ensemble, icl,
                                           "--holdout-per-class", "5"], tmp_path)
    check_heads(results)
    assert results["args"]["T"] == 2.0 and results["args"]["icl"] == (icl == "--icl")
    record = read_metrics(tmp_path)[-1]
    if ensemble == "general":
        assert record["w0"] >= 0 and record["w1"] >= 0
        assert record["w0"] + record["w1"] == pytest.approx(1, abs=1e-5)
        ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
        assert ckpt["model"]["ensemble_weights"].tolist() == pytest.approx([record["w0"], record["w1"]], abs=1e-6)
    else:
        assert "w0" not in record


def test_kdcl_general_holds_out_images_and_updates_weights(tmp_path):
    args = method_args(kdcl, ["--dataset", "synthetic", "--limit-train", "256", "--arch", "resnet20",
                              "--holdout-per-class", "5"], tmp_path)
    data = common.load_data(args, torch.device("cpu"))
    n = len(data.train_y)
    method = kdcl.build(args, data)
    assert len(data.train_y) == n - 5 * data.num_classes and len(data.holdout_y) == 5 * data.num_classes
    assert method.ensemble_weights.tolist() == pytest.approx([0.5, 0.5])
    logged = method.epoch_end(0, data)
    assert set(logged) == {"w0", "w1"} and sum(logged.values()) == pytest.approx(1, abs=1e-6)
    assert method.training  # epoch_end gives the training mode back
    assert "ensemble_weights" in method.state_dict()


def test_kdcl_rejects_bad_flags(tmp_path, capsys):
    def error_for(*flags, out):
        return usage_error(capsys, lambda: kdcl.main(TINY + [*flags, "--out-dir", str(tmp_path / out)]))
    assert "at least two students" in error_for("--students", "1", out="a")
    assert "--lambda-kd" in error_for("--lambda-kd", "-1", out="b")
    assert "hold out" in error_for(out="c")  # the default 50 per class cannot come out of 25 per class


# ================================================================================================
# ffl.py, ffcl.py, fefr.py: the feature fusion the three share
# ================================================================================================

FUSION_ARCHS = ["resnet32", "wrn_16_2", "resnet32,wrn_16_2"]


def save_backbones(tmp_path, archs, num_classes=10):
    paths = []
    for i, arch in enumerate(archs):
        path = tmp_path / f"pre{i}_{arch}.pt"
        torch.save(common.backbone_payload(common.build_model(arch, num_classes)), path)
        paths.append(str(path))
    return ",".join(paths)


def fusion_method_argvs(tmp_path, arch):
    k = len(arch.split(","))
    pretrained = save_backbones(tmp_path, arch.split(",") if k > 1 else [arch, arch])
    return {"ffl": (ffl, ["--arch", arch]),
            "ffcl": (ffcl, ["--arch", arch, "--pretrained", pretrained]),
            "fefr": (fefr, ["--arch", arch])}


def fused_grads_reach(method):
    """Backward the fused classifier's CE alone: which students receive a gradient."""
    method.train()
    _, fused = method.logits(torch.randn(4, 3, 32, 32))
    F.cross_entropy(fused, torch.randint(0, 10, (4,))).backward()
    return [any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters()) for s in method.students]


def fusion_run(module, out, argv, *flags):
    """Train a fusion method end to end: every head, both students exported."""
    results = run_main(module.main, argv + list(flags), out)
    assert {"s0", "s1", "ens", "fused"} <= set(results["final"])
    assert all(0 <= v <= 100 for v in results["final"].values())
    assert (out / "s0.pt").exists() and (out / "s1.pt").exists()
    return results


def test_ffl_ffcl_fefr_fusion_module_params_2x64_channels_100_classes():
    module = ffl.FusionModule([64, 64], 100)
    assert common.count_params(module) == 16228
    logits, fused_map = module(([torch.randn(2, 64, 8, 8)] * 2))
    assert logits.shape == (2, 100) and fused_map.shape == (2, 64, 8, 8)


def test_ffl_ffcl_fefr_fusion_module_pools_mixed_sizes_to_the_smallest():
    module = ffl.FusionModule([64, 128], 10)
    seen = []
    module.depthwise.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    module([torch.randn(2, 64, 8, 8), torch.randn(2, 128, 4, 4)])
    assert seen == [(2, 192, 4, 4)]
    assert module.fc.in_features == 96  # pointwise conv maps the channel sum to its mean


@pytest.mark.parametrize("arch", FUSION_ARCHS)
@pytest.mark.parametrize("name", ["ffl", "ffcl", "fefr"])
def test_ffl_ffcl_fefr_shapes_through_every_fusion_method(tmp_path, arch, name):
    module, argv = fusion_method_argvs(tmp_path, arch)[name]
    method = build_method(module, argv, tmp_path)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    method.eval()
    with torch.no_grad():
        heads = method(x)
    assert set(heads) == {"s0", "s1", "ens", "fused"}
    assert all(z.shape == (4, 10) for z in heads.values())
    method.train()
    loss, parts = method([x], y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(p.dim() == 0 for p in parts.values())
    assert {"ce_s0", "ce_s1", "ce_fused", "kd_fused"} <= set(parts)
    loss.backward()
    assert all(p.grad is not None for p in method.fusion_module.parameters())


@pytest.mark.parametrize("module", [ffl, fefr])
def test_ffl_ffcl_fefr_fused_classifier_gradient_reaches_students_by_default(tmp_path, module):
    assert fused_grads_reach(build_method(module, ["--arch", "resnet20"], tmp_path)) == [True, True]


@pytest.mark.parametrize("module", [ffl, fefr])
def test_ffl_ffcl_fefr_detach_fusion_input_stops_the_fused_gradient(tmp_path, module):
    method = build_method(module, ["--arch", "resnet20", "--detach-fusion-input"], tmp_path)
    assert fused_grads_reach(method) == [False, False]
    if module is fefr:  # the refiners still learn
        assert all(p.grad is not None for p in method.refiners.parameters())


def test_ffl_and_fefr_refuse_a_single_student(tmp_path):
    for module in (ffl, fefr):
        with pytest.raises(common.UsageError, match="at least 2"):
            build_method(module, ["--arch", "resnet20", "--students", "1"], tmp_path)


# ================================================================================================
# ffl.py: FFL
# ================================================================================================

def test_ffl_fusion_module_for_resnet32_pair_is_16k(tmp_path):
    method = build_method(ffl, ["--arch", "resnet32"], tmp_path, num_classes=100)
    assert common.count_params(method.fusion_module) == 16228


def test_ffl_kd_and_ramp_up():
    z = torch.randn(4, 10)
    assert ffl.kd_loss(z, z, 3.0).abs() < 1e-6
    zs, zt = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True)
    ref = 9 * (F.softmax(zt / 3, 1) * (F.log_softmax(zt / 3, 1) - F.log_softmax(zs / 3, 1))).sum(1).mean()
    loss = ffl.kd_loss(zs, zt, 3.0)
    assert torch.allclose(loss, ref, atol=1e-6)
    loss.backward()
    assert zt.grad is None and zs.grad is not None  # teacher detached
    assert ffl.ramp_up(0, 80) == pytest.approx(math.exp(-5))
    assert ffl.ramp_up(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert ffl.ramp_up(80, 80) == ffl.ramp_up(200, 80) == 1.0
    assert ffl.ramp_up(0, 0) == 1.0


def test_ffl_loss_is_the_papers_equation():
    torch.manual_seed(0)
    method = ffl.FFL([common.build_model("resnet20", 10) for _ in range(2)], 10, T=3.0, rampup=80).train()
    method.set_epoch(20)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    loss, parts = method([x], y)
    z, z_f = method.logits(x)
    w, kd = math.exp(-5 * (1 - 20 / 80) ** 2), ffl.kd_loss
    ref = (sum(F.cross_entropy(zi, y) for zi in z) + F.cross_entropy(z_f, y)
           + w * (sum(kd(zi, z_f, 3.0) for zi in z) + kd(z_f, (z[0] + z[1]) / 2, 3.0)))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert parts["kd_s1"].item() == pytest.approx(w * kd(z[1], z_f, 3.0).item(), rel=1e-5)


def test_ffl_set_epoch_ramps_the_kd_weight(tmp_path):
    method = build_method(ffl, ["--arch", "resnet20", "--rampup", "10"], tmp_path)
    assert method.kd_weight.item() == 1.0  # never set: the full weight, for a loop that knows no set_epoch
    method.set_epoch(0)
    assert method.kd_weight.item() == pytest.approx(math.exp(-5))
    method.set_epoch(5)
    assert method.kd_weight.item() == pytest.approx(math.exp(-5 * 0.25))
    method.set_epoch(12)
    assert method.kd_weight.item() == 1.0
    assert "kd_weight" not in method.state_dict()  # set again by the loop every epoch, resume included


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--detach-fusion-input"]])
def test_ffl_end_to_end(tmp_path, flags):
    fusion_run(ffl, tmp_path / "out", TINY if not flags else SMOKE, *flags)


# ================================================================================================
# ffcl.py: FFCL
# ================================================================================================

def test_ffcl_response_knowledge_averages_over_the_other_peers():
    logits = [torch.randn(4, 10) for _ in range(3)]
    terms = ffcl.response_kd(logits, 1.0)
    assert torch.allclose(terms[0], (ffcl.kd_loss(logits[0], logits[1], 1) + ffcl.kd_loss(logits[0], logits[2], 1)) / 2)


@pytest.mark.parametrize("flags,kinds", [
    ([], {"fk", "rk", "nrk"}),                                          # A
    (["--no-response"], {"fk", "nrk"}),                                 # B
    (["--no-feature"], {"rk", "nrk"}),                                  # C
    (["--no-regularization"], {"fk", "rk"}),                            # D
    (["--no-feature", "--no-regularization"], {"rk"}),                  # E
    (["--no-response", "--no-regularization"], {"fk"}),                 # F
    (["--no-feature", "--no-response"], {"nrk"}),                       # G
])
def test_ffcl_table5_cases_have_exactly_their_loss_terms(tmp_path, flags, kinds):
    if "--no-regularization" not in flags:
        flags = flags + ["--pretrained", save_backbones(tmp_path, ["resnet20"] * 2)]
    method = build_method(ffcl, ["--arch", "resnet20"] + flags, tmp_path)
    _, parts = method([torch.randn(4, 3, 32, 32)], torch.randint(0, 10, (4,)))
    found = {k.rsplit("_", 1)[0] for k in parts if k.endswith(("_s0", "_s1"))} - {"ce"}
    assert found == kinds
    assert (method.teachers is None) == ("nrk" not in kinds)


def test_ffcl_without_feature_knowledge_the_fused_probe_never_reaches_peers(tmp_path):
    method = build_method(ffcl, ["--arch", "resnet20", "--no-feature", "--no-regularization"], tmp_path)
    assert fused_grads_reach(method) == [False, False]
    method_fk = build_method(ffcl, ["--arch", "resnet20", "--no-regularization"], tmp_path)
    assert fused_grads_reach(method_fk) == [True, True]


def test_ffcl_pretrained_copies_are_frozen_and_stay_in_eval(tmp_path):
    args = method_args(ffcl, ["--arch", "resnet20", "--pretrained", save_backbones(tmp_path, ["resnet20"] * 2)],
                       tmp_path)
    method = ffcl.build(args, fake_data())
    method.train()
    assert method.training and method.students[0].training
    assert not any(m.training for m in method.teachers.modules())
    assert not any(p.requires_grad for p in method.teachers.parameters())
    sgd = common.make_optimizers(method, args)[0]
    in_sgd = {id(p) for g in sgd.param_groups for p in g["params"]}
    assert not any(id(p) in in_sgd for p in method.teachers.parameters())
    before = copy.deepcopy(method.teachers.state_dict())  # includes BN running statistics
    student_before = copy.deepcopy(method.students[0].state_dict())
    loss, parts = method([torch.randn(8, 3, 32, 32)], torch.randint(0, 10, (8,)))
    loss.backward()
    sgd.step()
    after = method.teachers.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(student_before[k], v) for k, v in method.students[0].state_dict().items())
    assert set(common.exports(method)) == {"s0", "s1"}  # the peers, not their frozen copies


def test_ffcl_teacher_logits_come_from_the_loaded_files(tmp_path):
    pretrained = save_backbones(tmp_path, ["resnet20", "resnet20"])
    method = build_method(ffcl, ["--arch", "resnet20", "--pretrained", pretrained], tmp_path)
    ref = common.load_backbone(pretrained.split(",")[1]).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(method.teachers(x)[1], ref(x)[0])


@pytest.mark.slow
def test_ffcl_pretrained_with_wrong_architecture_is_a_usage_error(tmp_path, capsys):
    wrong = save_backbones(tmp_path, ["resnet20", "resnet32"])
    with pytest.raises(common.UsageError, match="resnet32"):
        build_method(ffcl, ["--arch", "resnet20", "--pretrained", wrong], tmp_path)
    message = usage_error(capsys, lambda: ffcl.main(TINY + ["--out-dir", str(tmp_path / "e2e"),
                                                            "--pretrained", wrong]))
    assert "holds a resnet32" in message


@pytest.mark.parametrize("argv,match", [
    (["--pretrained", "PRE1"], "--students is 2"),                           # one file for two peers
    ([], "needs pre-trained peers"),                                          # regularization, no source
    (["--no-regularization", "--pretrain-epochs", "1"], "no pre-trained"),   # pre-training that is unused
    (["--pretrained", "PRE2", "--pretrain-epochs", "1"], "not both"),
    (["--no-feature", "--no-response", "--no-regularization"], "switched off"),
    (["--pretrained", "PRE10"], "classes"),                                   # trained for 100 classes
])
def test_ffcl_bad_flag_combinations(tmp_path, argv, match):
    subs = {"PRE1": save_backbones(tmp_path, ["resnet20"]), "PRE2": save_backbones(tmp_path, ["resnet20"] * 2)}
    subs["PRE10"] = ",".join(str(tmp_path / f"c{i}.pt") for i in range(2))
    for i in range(2):
        torch.save(common.backbone_payload(common.build_model("resnet20", 100)), tmp_path / f"c{i}.pt")
    argv = [subs.get(a, a) for a in argv]
    with pytest.raises(common.UsageError, match=match):
        build_method(ffcl, ["--arch", "resnet20"] + argv, tmp_path)


@pytest.fixture(scope="module")
def pretrained_by_ffcl(tmp_path_factory):
    """Case A with in-script pre-training; its OUT/pretrain/s*.pt are reused by the other cases."""
    out = tmp_path_factory.mktemp("ffcl_a") / "out"
    fusion_run(ffcl, out, TINY, "--pretrain-epochs", "1")
    assert (out / "pretrain" / "results.json").exists()
    saved = torch.load(out / "last.pt", weights_only=True)["model"]
    assert any(k.startswith("teachers.") for k in saved)  # kept for --resume
    return ",".join(str(out / "pretrain" / f"s{i}.pt") for i in range(2))


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--no-response"], ["--no-feature"], ["--no-regularization"],
                                   ["--no-feature", "--no-response"]])
def test_ffcl_end_to_end(tmp_path, pretrained_by_ffcl, flags):
    if "--no-regularization" not in flags:
        flags = flags + ["--pretrained", pretrained_by_ffcl]
    results = fusion_run(ffcl, tmp_path / "out", SMOKE, *flags)
    assert results["method"] == "ffcl"


# ================================================================================================
# fefr.py: FEFR
# ================================================================================================

def test_fefr_reconstruction_averages_each_group_with_the_next_cyclically():
    x = torch.arange(4.0).repeat_interleave(3).view(1, 12, 1, 1).expand(2, 12, 2, 2)
    out = fefr.Reconstruction(4)(x)
    assert out.shape == x.shape
    assert out[0, ::3, 0, 0].tolist() == [0.5, 1.5, 2.5, 1.5]


def test_fefr_dual_attention_is_cbam():
    att = fefr.DualAttention(64)
    assert att.mlp[0].out_features == 4  # reduction 16
    assert att.spatial[0].kernel_size == (7, 7)


@pytest.mark.parametrize("arch,channels", [("resnet32", 96), ("wrn_16_2", 192)])
def test_fefr_refiner_shapes(arch, channels):
    net = common.build_model(arch, 10)
    shapes = fefr.stage_shapes(net, (32, 32))
    _, features = net(torch.randn(2, 3, 32, 32))
    refiner = fefr.Refiner(shapes)
    assert refiner.early(*features[-3:]).shape == (2, channels, 8, 8)
    assert refiner.reconstruction(torch.randn(2, channels, 8, 8)).shape == (2, channels, 8, 8)
    assert refiner.attention(torch.randn(2, channels, 8, 8)).shape == (2, channels, 8, 8)
    assert refiner(features).shape == (2, channels, 8, 8)
    assert fefr.Refiner(shapes, early_fusion=False)(features).shape == features[-1].shape


def test_fefr_fusion_branch_gets_its_own_weight_decay(tmp_path):
    args = method_args(fefr, ["--arch", "resnet20", "--fusion-wd", "1e-5", "--wd", "1e-4"], tmp_path)
    method = fefr.build(args, fake_data())
    sgd = common.make_optimizers(method, args)[0]
    students, fusion = sgd.param_groups
    assert students["weight_decay"] == 1e-4 and fusion["weight_decay"] == 1e-5
    fusion_ids = {id(p) for p in fusion["params"]}
    assert all(id(p) in fusion_ids for p in method.refiners.parameters())
    assert all(id(p) in fusion_ids for p in method.fusion_module.parameters())
    assert len(students["params"]) + len(fusion["params"]) == len(list(method.parameters()))


def test_fefr_groups_must_divide_channels(tmp_path):
    with pytest.raises(ValueError, match="divisible"):  # common.main turns it into one sentence
        build_method(fefr, ["--arch", "resnet20", "--groups", "5"], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--no-early-fusion"], ["--no-reconstruction"], ["--no-attention"]])
def test_fefr_end_to_end(tmp_path, flags):
    fusion_run(fefr, tmp_path / "out", TINY if not flags else SMOKE, *flags)


# ================================================================================================
# ffsd.py: FFSD
# ================================================================================================

def ffsd_method(arch="resnet20", students=3, num_classes=10):
    torch.manual_seed(0)
    return ffsd.FFSD([common.build_model(arch, num_classes) for _ in range(students)], num_classes)


def test_ffsd_diversity_target_matches_formula_above_and_below_threshold():
    att = torch.tensor([[4., 9., 1., 7., 2., 8., 3., 6., 5.],       # thr index floor(9/3)=3 -> 3rd smallest = 3
                        [0.625, 0.125, 1.125, 0.375, 0.875, 0.25, 1.0, 0.5, 0.75]])  # 3rd smallest = 0.375
    target = ffsd.diversity_target(att.view(2, 3, 3))
    for b, thr_raw in ((0, 3.0), (1, 0.375)):
        n = math.sqrt(sum(v * v for v in att[b].tolist()))
        for i, v in enumerate(att[b].tolist()):
            y = v / n
            if v > thr_raw:      # task-relevant region: attention moved to n - y
                expected = n - y
            elif v < thr_raw:    # weak region: kept as it is
                expected = y
            else:                       # the threshold itself: sign 0 -> n/2
                expected = n / 2
            assert target[b, i].item() == pytest.approx(expected, rel=1e-5), (b, i, v)
    # (B,1,H,W) input gives the same thing; loss is mean((x/|x| - y')^2)
    assert torch.allclose(ffsd.diversity_target(att.view(2, 1, 3, 3)), target)
    x = torch.rand(2, 9)
    expected_loss = ((x / x.norm(dim=1, keepdim=True)) - target).pow(2).mean()
    assert torch.allclose(ffsd.diversity_loss(x, att), expected_loss)


def test_ffsd_shifted_features_carry_the_target_attention_shift():
    f = torch.rand(2, 4, 3, 3)
    shifted = ffsd.shifted_features(f)
    att = ffsd.attention(f)
    n, y = att.norm(dim=1, keepdim=True), att / att.norm(dim=1, keepdim=True)
    delta = (ffsd.diversity_target(att) - y) * n / 4
    assert torch.allclose(shifted - f, delta.view(2, 1, 3, 3).expand(2, 4, 3, 3), atol=1e-6)


def test_ffsd_lambda_rampup():
    m = ffsd_method(students=2)
    full = [1e-5, 10.0, 1000.0]  # (div, fusion, sd)
    assert m.ramped_lambdas.tolist() == pytest.approx(full)  # never set: the full weights
    m.set_epoch(0)  # epoch 1 of the official count
    div, fusion, sd = m.ramped_lambdas.tolist()
    assert fusion == pytest.approx(10 * math.exp(-5 * 0.8 ** 2))
    assert div == pytest.approx(1e-5 * math.exp(-5 * 0.8 ** 2))
    m.set_epoch(4)
    assert m.ramped_lambdas.tolist() == pytest.approx(full)
    m.set_epoch(9)
    assert m.ramped_lambdas[2].item() == 1000.0


@pytest.mark.parametrize("arch,students", [("resnet32", 3), ("wrn_16_2", 3), ("resnet20", 4)])
def test_ffsd_shapes_through_sd_adapter_fusion(arch, students):
    m = ffsd_method(arch, students).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = [s(x)[1] for s in m.students]
        c, h, w = feats[0][-1].shape[1:]
        assert sorted(m.sd_modules) == sorted(["leader"] + [f"s{k}" for k in range(2, students)])
        for name, sd in m.sd_modules.items():
            rebuilt = sd(feats[0][-1])
            assert [r.shape for r in rebuilt] == [f.shape for f in feats[0][:-1]]
        cat = torch.cat([f[-1] for f in feats[1:]], 1)
        assert cat.shape == (2, c * (students - 1), h, w)
        assert m.adapter(feats[0][-1]).shape == cat.shape
        z_f, fused_map = m.fusion_module([f[-1] for f in feats[1:]])
        assert z_f.shape == (2, 10) and fused_map.shape == (2, c, h, w)
        heads = m(x)
    assert set(heads) == {"leader", "ens", "fused"} | {f"s{k}" for k in range(1, students)}
    assert all(v.shape == (2, 10) for v in heads.values())
    probs = torch.stack([heads[f"s{k}"].softmax(1) for k in range(1, students)]).mean(0)
    assert torch.allclose(heads["ens"].exp(), probs, atol=1e-6)  # leader not in the ensemble


def grad_owners(m, loss):
    """Backward `loss` alone; return the names of the sub-modules that received a non-zero gradient."""
    m.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    owners = {"leader": m.students[0], "fusion": m.fusion_module, "adapter": m.adapter,
              **{f"s{k}": m.students[k] for k in range(1, len(m.students))},
              **{f"sd_{n}": sd for n, sd in m.sd_modules.items()}}
    return {name for name, mod in owners.items()
            if any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())}


def test_ffsd_detach_points():
    m = ffsd_method(students=4).train()
    m.set_epoch(10)  # full weights
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    total, parts = m([x], y)
    assert torch.allclose(total, sum(parts.values()))
    assert set(parts) == {"ce_s1", "kd_s1", "ce_s2", "kd_s2", "div_s2", "sdt_s2", "ce_s3", "kd_s3", "div_s3",
                          "sdt_s3", "ce_fused", "kd_fused", "ce_leader", "kd_leader", "att_leader", "adapt_leader",
                          "sdt_leader", "sd_leader", "sd_s2", "sd_s3"}
    # the fused classifier trains the fusion module only, never the common students
    assert grad_owners(m, parts["ce_fused"] + parts["kd_fused"]) == {"fusion"}
    # the SD modules learn from their own reconstruction loss only, and it trains nothing else
    assert grad_owners(m, parts["sd_leader"]) == {"sd_leader"}
    assert grad_owners(m, parts["sd_s2"] + parts["sd_s3"]) == {"sd_s2", "sd_s3"}
    others = sum(v for k, v in parts.items() if not k.startswith("sd_"))
    assert not any(n.startswith("sd_") for n in grad_owners(m, others))
    # leader terms stay in the leader (+ its adapter); student terms stay in that student
    leader_terms = sum(v for k, v in parts.items() if k.endswith("_leader") and k != "sd_leader")
    assert grad_owners(m, leader_terms) == {"leader", "adapter"}
    assert grad_owners(m, parts["div_s2"] + parts["sdt_s2"]) == {"s2"}
    assert grad_owners(m, parts["kd_s3"] + parts["ce_s3"]) == {"s3"}
    # the whole loss reaches everything, each optimizer gets its own parameters
    assert grad_owners(m, total) == {"leader", "fusion", "adapter", "s1", "s2", "s3", "sd_leader", "sd_s2", "sd_s3"}
    groups = m.param_groups()
    adam = m.extra_optimizer()
    sgd_ids = {id(p) for g in groups for p in g["params"]}
    adam_ids = {id(p) for g in adam.param_groups for p in g["params"]}
    assert not sgd_ids & adam_ids and sgd_ids | adam_ids == {id(p) for p in m.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in m.fusion_module.parameters()}
    assert groups[1]["weight_decay"] == 1e-5
    assert adam.defaults["lr"] == 1e-3 and adam.defaults["weight_decay"] == 1e-4


def test_ffsd_sd_application_leaves_batchnorm_statistics_alone():
    m = ffsd_method(students=3).train()
    before = {n: sd.blocks[0][1].running_mean.clone() for n, sd in m.sd_modules.items()}
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    m([x], y)
    # one train-mode forward each (the reconstruction), the eval-mode target pass updates nothing, and the
    # module is back in train mode afterwards
    assert all(sd.training for sd in m.sd_modules.values())
    assert all(not torch.equal(before[n], sd.blocks[0][1].running_mean) for n, sd in m.sd_modules.items())
    assert all(sd.blocks[0][1].num_batches_tracked.item() == 1 for sd in m.sd_modules.values())


@pytest.mark.slow
@pytest.mark.parametrize("students", [2, 3, 4])
def test_ffsd_end_to_end(tmp_path, students):
    # run_main also checks that main() returns what results.json holds
    saved = run_main(ffsd.main, (TINY if students == 3 else SMOKE) + ["--students", str(students)], tmp_path)
    heads = {"leader", "ens", "fused", "any"} | {f"s{k}" for k in range(1, students)}
    assert set(saved["final"]) == heads
    assert all(0 <= v <= 100 for v in saved["final"].values())
    record = read_metrics(tmp_path)[-1]
    assert all(math.isfinite(v) for v in record.values() if isinstance(v, float))
    assert ("kd_s1" in record) == (students > 2) and ("div_s2" in record) == (students > 2)
    assert (tmp_path / "leader.pt").exists()
    if students == 3:
        # the deployed leader reloads into a plain backbone and reproduces the run's `leader` head exactly
        model = common.load_backbone(str(tmp_path / "leader.pt"), arch="resnet20", num_classes=10)
        args = SimpleNamespace(**json.loads((tmp_path / "args.json").read_text()))
        data = common.load_data(args, torch.device("cpu"))
        assert common.evaluate(model, data)[0]["top1"] == saved["final"]["leader"]


@pytest.mark.parametrize("extra,message", [
    (["--students", "1"], "--students 2 or more"),
    (["--students", "2", "--arch", "resnet20,resnet32"], "one architecture"),
    (["--students", "3", "--lambda-div", "-1"], "--lambda-div must be non-negative"),
])
def test_ffsd_usage_errors(tmp_path, capsys, extra, message):
    assert message in usage_error(capsys, lambda: ffsd.main(TINY + extra + ["--out-dir", str(tmp_path)]))


# ================================================================================================
# mkb_cl.py: MKB-CL
# ================================================================================================

def mkb_method(archs, num_classes=10, **kw):
    torch.manual_seed(0)
    return mkb_cl.MKBCL([common.build_model(a, num_classes) for a in archs], num_classes, **kw)


def test_mkb_cl_shapes_resnet32_wrn_16_2():
    m = mkb_method(["resnet32", "wrn_16_2"], num_classes=100)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    for net, channels in zip(m.students, (32, 64)):  # the default MKB reads stage 1: 32 (64) x 16 x 16
        cfg = net.halves["1"].config
        assert (cfg["channels"], cfg["size"], cfg["unified"]) == (channels, [16, 16], [16, 16])
        logits, embeddings = net(x, with_embeddings=True)
        assert logits.shape == (4, 100) and [e.shape for e in embeddings] == [(4, 1024)]
    loss, parts = m([x], y)
    assert set(parts) == {f"{p}_s{i}" for p in ("ce", "metric", "verif") for i in (0, 1)}
    assert loss.dim() == 0 and torch.isfinite(loss)
    m.eval()
    heads = m(x)
    assert set(heads) == {"s0", "s1", "ens"} and all(z.shape == (4, 100) for z in heads.values())
    assert torch.allclose(heads["ens"].exp().sum(1), torch.ones(4), atol=1e-5)


def test_mkb_cl_three_networks_mixed_sizes():
    # 16x16 input keeps it cheap: stage 1 is 8x8 (resnet20, wrn_16_2) and 4x4 (shufflenetv2)
    m = mkb_method(["resnet20", "shufflenetv2", "wrn_16_2"], mkb_at=[0, 1], image_size=(16, 16))
    strides = [tuple(net.halves["1"].encoder[0].stride) for net in m.students]
    assert strides == [(2, 2), (1, 1), (2, 2)]
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for net in m.students:
        assert [e.shape for e in net(x, with_embeddings=True)[1]] == [(4, 1024), (4, 1024)]
    loss, parts = m([x], y)
    assert len(parts) == 9
    loss.backward()
    for net in m.students:  # every half of both MKBs receives gradient
        for half in net.halves.values():
            assert half.encoder[0].weight.grad.abs().sum() > 0
    m.eval()
    assert set(m(x)) == {"s0", "s1", "s2", "ens"}


@pytest.mark.parametrize("route", ["sum", "mul"])
@pytest.mark.parametrize("channels,size,unified", [(32, (16, 16), (16, 16)), (32, (16, 16), (8, 8)),
                                                   (16, (32, 32), (8, 8)), (64, (8, 8), (4, 4))])
def test_mkb_cl_routed_feature_has_stage_shape(route, channels, size, unified):
    half = mkb_cl.MKBHalf(channels, size, unified, embed_dim=1024, route=route)
    x = torch.randn(3, channels, *size)
    routed, e = half(x)
    assert routed.shape == x.shape and e.shape == (3, 1024)
    gate = 1 + F.elu(half.decoder(half.space_transfer(half.encoder(x))))  # Eq. 3
    assert torch.allclose(routed, gate + x if route == "sum" else gate * x, atol=1e-6)
    assert (gate > 0).all()


def test_mkb_cl_metric_loss():
    e = torch.randn(8, 1024)
    assert mkb_cl.metric_loss(e, e).abs() < 1e-6
    assert mkb_cl.metric_loss(e, 3 * e).abs() < 1e-6     # cosine: scale does not count
    assert mkb_cl.metric_loss(e, torch.randn(8, 1024)) > 0.5
    assert torch.allclose(mkb_cl.metric_loss(e, -e), torch.tensor(2.0))
    # K = 3, Eq. 6: distance to the mean of the other two; zero when all three agree
    es = [torch.randn(8, 16, requires_grad=True) for _ in range(3)]
    losses = mkb_cl.metric_losses(es)
    assert torch.allclose(losses[0], mkb_cl.metric_loss(es[0], (es[1] + es[2]) / 2))
    assert all(d.abs() < 1e-6 for d in mkb_cl.metric_losses([es[0]] * 3))


def test_mkb_cl_metric_detach():
    a, b = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    ga, gb = torch.autograd.grad(mkb_cl.metric_losses([a, b])[0], [a, b], allow_unused=True)
    assert ga.abs().sum() > 0 and (gb is None or gb.abs().sum() == 0)
    ga, gb = torch.autograd.grad(mkb_cl.metric_losses([a, b], detach=False)[0], [a, b])
    assert gb.abs().sum() > 0


def test_mkb_cl_verification_head_trains():
    m = mkb_method(["resnet20", "resnet20"], embed_dim=256, image_size=(8, 8))  # small images: fast
    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 4
    x = torch.randn(4, 3, 8, 8, generator=g)[y] + 0.3 * torch.randn(32, 3, 8, 8, generator=g)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(8):
        loss, parts = m([x], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append([parts["verif_s0"].item(), parts["verif_s1"].item()])
    assert history[-1][0] < 0.7 * history[0][0] and history[-1][1] < 0.7 * history[0][1]


@pytest.mark.slow
def test_mkb_cl_end_to_end_sum_route_and_standalone_networks(tmp_path):
    results = run_main(mkb_cl.main, TINY, tmp_path)
    assert set(results["final"]) == {"s0", "s1", "ens", "any"}
    data = common.load_data(common.make_parser().parse_args(TINY), torch.device("cpu"))
    for i in (0, 1):
        payload = torch.load(tmp_path / f"net{i}.pt", weights_only=True)  # plain data
        assert payload["kind"] == "mkb_network" and payload["mkb"][1]["route"] == "sum"  # keyed by stage index
        assert not any("verifier" in k for k in payload["state_dict"])
        net = mkb_cl.load_network(str(tmp_path / f"net{i}.pt"))
        assert set(net.halves) == {"1"}
        assert common.evaluate(net, data)[0]["top1"] == results["final"][f"s{i}"]


@pytest.mark.slow
def test_mkb_cl_end_to_end_mul_route_two_mkbs(tmp_path):
    results = run_main(mkb_cl.main, SMOKE + ["--route", "mul", "--mkb-at", "1,2"], tmp_path)
    assert set(results["final"]) == {"s0", "s1", "ens", "any"}
    record = read_metrics(tmp_path)[-1]
    assert record["metric_s0"] > 0 and record["verif_s1"] > 0
    net = mkb_cl.load_network(str(tmp_path / "net1.pt"))
    assert net.backbone.arch == "resnet20" and set(net.halves) == {"1", "2"}
    assert all(h.route == "mul" for h in net.halves.values())


def test_mkb_cl_impossible_sizes_raise_usage_error(tmp_path):
    # input 20x20 at stage 2: resnet20 gives 5x5, shufflenetv2 3x3 -> no integer stride
    args = method_args(mkb_cl, ["--arch", "resnet20,shufflenetv2", "--mkb-at", "2"], tmp_path)
    with pytest.raises(ValueError, match="integer encoder strides"):
        mkb_cl.build(args, fake_data(n=2, size=20))


@pytest.mark.parametrize("flags,message", [(["--mkb-at", "3"], "not a stage of resnet20"),
                                           (["--mkb-at", "1,x"], "comma list"),
                                           (["--embed-dim", "1000"], "not a multiple"),
                                           (["--students", "1"], "at least two"),
                                           (["--T", "3"], "no temperature")])
def test_mkb_cl_bad_flags_raise_usage_error(tmp_path, flags, message):
    args = method_args(mkb_cl, TINY + flags, tmp_path)
    with pytest.raises((common.UsageError, ValueError), match=message):  # common.main: one sentence for both
        mkb_cl.build(args, fake_data(n=2))


def test_mkb_cl_bad_flag_exits_with_one_sentence(tmp_path, capsys):
    message = usage_error(capsys, lambda: mkb_cl.main(TINY + ["--mkb-at", "3", "--out-dir", str(tmp_path)]))
    assert message.startswith("error: --mkb-at 3 is not a stage of resnet20")


def test_mkb_cl_load_network_rejects_other_files(tmp_path):
    path = str(tmp_path / "backbone.pt")
    torch.save(common.backbone_payload(common.build_model("resnet20", 10)), path)
    with pytest.raises(common.UsageError, match="not a network saved by MKB-CL"):
        mkb_cl.load_network(path)


def test_mkb_cl_recipe_trains_the_cifar_resnet32_without_augmentation(capsys):
    parser = script_parser(mkb_cl)
    common.apply_recipe(parser, mkb_cl.RECIPES, ["--recipe", "paper"])
    args = common.check_args(parser.parse_args(["--device", "cpu", "--out-dir", "unused"]))
    assert common.student_archs(args) == ["resnet32", "mobilenetv2"] and args.augment == "none"
    method = mkb_cl.build(args, fake_data(100))
    backbone = method.students[0].backbone
    assert backbone.arch == "resnet32" and 0.46e6 < common.count_params(backbone) < 0.48e6  # not resnet34's 21 M
    with pytest.raises(SystemExit):
        mkb_cl.main(["--recipe", "paper", "--help"])
    assert "(default: resnet32,mobilenetv2)" in " ".join(capsys.readouterr().out.split())
    rows = [r for r in published.ROWS if r["paper"] == "mkb_cl" and r["table"] == "2"]
    assert all(r["archs"] == "resnet32,mobilenetv2" and "ResNet-32" in r["networks"] for r in rows)


# ================================================================================================
# one.py: ONE
# ================================================================================================

class StagedNet(nn.Module):
    """A user's own stage-structured network, what ONE cuts: `stages` run in order, then `classifier`."""

    def __init__(self, seed=0, width=4, num_classes=5):
        super().__init__()
        torch.manual_seed(seed)

        def block(cin, cout, s):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stages = nn.ModuleList([block(3, width, 1), block(width, width, 2), block(width, 2 * width, 2)])
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.classifier(x), features


def one_method(branches=3, **kw):
    return one.ONE([StagedNet(seed=i) for i in range(branches)], image_size=(8, 8), **kw)


def test_one_loss_is_the_papers_objective_by_hand():
    """CE of every branch + CE of the gated teacher + w(e) T^2 KL(teacher || branch), the gate computed by hand:
    GAP of the trunk's output, FC, batch norm on the batch's statistics, ReLU, softmax."""
    method = one_method(rampup=80).train()
    g = torch.Generator().manual_seed(1)
    method.gate.bn.weight.data = torch.rand(3, generator=g) + 0.5  # a BN scale and shift that are not 1 and 0
    method.gate.bn.bias.data = torch.randn(3, generator=g)
    method.set_epoch(20)
    x, y = torch.randn(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 4, 0])
    loss, parts = method([x], y)
    with torch.no_grad():
        h = x
        for stage in method.trunk:
            h = stage(h)
        z = [branch(h).tolist() for branch in method.branches]  # train mode: the same batch statistics
        pooled = h.mean((2, 3)).tolist()
    W, b = method.gate.fc.weight.tolist(), method.gate.fc.bias.tolist()
    gamma, beta, eps = method.gate.bn.weight.tolist(), method.gate.bn.bias.tolist(), method.gate.bn.eps
    B, m, C, T, w = 6, 3, 5, 3.0, math.exp(-5 * (1 - 20 / 80) ** 2)
    a = [[sum(W[i][c] * pooled[n][c] for c in range(len(pooled[n]))) + b[i] for i in range(m)] for n in range(B)]
    mu = [sum(a[n][i] for n in range(B)) / B for i in range(m)]
    var = [sum((a[n][i] - mu[i]) ** 2 for n in range(B)) / B for i in range(m)]  # biased, as BN normalises
    gate = [softmax_loop([max(0.0, (a[n][i] - mu[i]) / math.sqrt(var[i] + eps) * gamma[i] + beta[i])
                          for i in range(m)]) for n in range(B)]
    z_e = [[sum(gate[n][i] * z[i][n][c] for i in range(m)) for c in range(C)] for n in range(B)]

    def kl(teacher, student):  # T^2 KL(softmax(teacher/T) || softmax(student/T)), mean over the batch
        p, q = softmax_loop(teacher, T), softmax_loop(student, T)
        return T * T * sum(pc * math.log(pc / qc) for pc, qc in zip(p, q))

    expected = {f"ce_s{i}": sum(ce_loop(z[i][n], y[n]) for n in range(B)) / B for i in range(m)}
    expected["ce_gate"] = sum(ce_loop(z_e[n], y[n]) for n in range(B)) / B
    expected.update({f"kd_s{i}": w * sum(kl(z_e[n], z[i][n]) for n in range(B)) / B for i in range(m)})
    assert list(parts) == list(expected)
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, rel=1e-5), name
    assert loss.item() == pytest.approx(sum(expected.values()), rel=1e-5)
    method.eval()
    with torch.no_grad():  # the gate head is the teacher: in eval mode, on BN's running statistics
        heads = method(x)
        h = x
        for stage in method.trunk:
            h = stage(h)
        scores = method.gate(h)
    assert set(heads) == {"s0", "s1", "s2", "ens", "gate"} and torch.allclose(scores.sum(1), torch.ones(6))
    assert torch.allclose(heads["gate"], sum(scores[:, i:i + 1] * heads[f"s{i}"] for i in range(3)), atol=1e-6)
    method.set_epoch(0)
    assert method.kd_weight.item() == pytest.approx(math.exp(-5))  # the code's ramp-up, epochs from 0
    assert one_method(rampup=0).kd_weight.item() == 1.0  # never set, or --rampup 0: the full weight


def test_one_gradients_the_gate_learns_from_the_teachers_ce_alone():
    """ce_s<i>, kd_s<i>: branch i and the trunk (kd's teacher is detached); ce_gate: the gate, every branch and the
    trunk (the teacher is not detached there); nothing else reaches the gate."""
    method = one_method().train()
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6) % 5
    _, parts = method([x], y)
    groups = {"trunk": method.trunk, "gate": method.gate, **{f"b{i}": b for i, b in enumerate(method.branches)}}

    def reached(part):
        method.zero_grad()
        parts[part].backward(retain_graph=True)
        return {name for name, mod in groups.items() if any(p.grad is not None and p.grad.abs().sum() > 0
                                                              for p in mod.parameters())}
    for i in range(3):
        assert reached(f"ce_s{i}") == {"trunk", f"b{i}"}
        assert reached(f"kd_s{i}") == {"trunk", f"b{i}"}
    assert reached("ce_gate") == {"trunk", "gate", "b0", "b1", "b2"}
    gate_from_ce = [p.grad.clone() for p in method.gate.parameters()]
    method.zero_grad()
    sum(parts.values()).backward()
    assert all(torch.allclose(p.grad, q) for p, q in zip(method.gate.parameters(), gate_from_ce))


def test_one_cuts_the_network_where_asked_and_each_branch_with_the_trunk_is_that_network(tmp_path):
    method = build_method(one, ["--arch", "resnet20", "--branches", "4", "--branch-at", "1"], tmp_path).eval()
    assert len(method.branches) == 4 and len(method.trunk) == 1 and method.branch_at == 1
    assert method.gate.fc.in_features == 16  # reads the trunk's output, resnet20's first stage
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        heads = method(x)
        for i, network in enumerate(method.students):  # branch i with the trunk: the whole network, alone
            assert torch.allclose(network(x)[0], heads[f"s{i}"], atol=1e-6)
    resnet20 = common.build_model("resnet20", 10)
    assert [(k, v.shape) for k, v in method.students[0].state_dict().items()] == \
        [(k, v.shape) for k, v in resnet20.state_dict().items()]
    assert not torch.equal(method.branches[0].classifier[2].weight, method.branches[1].classifier[2].weight)
    default = build_method(one, ["--arch", "resnet18"], tmp_path)  # 3 branches on the last of 4 stages
    assert len(default.branches) == 3 and default.branch_at == 3 and default.gate.fc.in_features == 256
    assert build_method(one, ["--arch", "resnet20", "--students", "2"], tmp_path).gate.fc.out_features == 2


@pytest.mark.parametrize("argv,message", [
    (["--branches", "1"], "ONE needs at least 2 branches to ensemble, got --branches 1"),
    (["--arch", "resnet20,wrn_16_2", "--students", "2"], "give one --arch, got resnet20,wrn_16_2"),
    (["--branch-at", "3"], "must be a stage from 1 to 2 of resnet20 (its stages are 0 to 2), got 3"),
    (["--branch-at", "0"], "must be a stage from 1 to 2 of resnet20"),
    (["--rampup", "-1"], "--rampup must be non-negative, got -1"),
])
def test_one_refuses_what_it_cannot_build_in_one_sentence(tmp_path, capsys, argv, message):
    assert message in usage_error(capsys, lambda: one.main(SMOKE + argv + ["--out-dir", str(tmp_path / "run")]))
    assert not (tmp_path / "run").exists()


class ForwardElsewhere(StagedNet):
    def forward(self, x):  # its logits are not the classifier's on the last stage
        logits, features = super().forward(x)
        return 2 * logits, features


def test_one_refuses_a_network_it_cannot_cut_in_one_sentence():
    import torchvision
    extra = StagedNet()
    extra.head = nn.Linear(2, 2)  # state outside `stages` and `classifier`: a branch could not hold it
    for networks, error, says in [
        ([torchvision.models.resnet18(num_classes=5) for _ in range(2)], TypeError, "needs `stages`"),
        ([extra, StagedNet(1)], TypeError, "also keeps state in head"),
        ([ForwardElsewhere(0), ForwardElsewhere(1)], TypeError, "forward must run its `stages` in order"),
        ([StagedNet(0), StagedNet(1, width=8)], ValueError, "every student must have the same architecture"),
        ([StagedNet(0)], ValueError, "at least 2 branches")]:
        with pytest.raises(error, match=re.escape(says)) as info:
            one.ONE(networks, image_size=(8, 8))
        assert len(str(info.value).splitlines()) == 1 and "common" not in str(info.value)


POOLS_IN_FORWARD = """
import torch, torch.nn as nn
import one


class Net(nn.Module):  # a common way to write one: the classifier a Linear, the pooling in forward
    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU()),
                                     nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())])
        self.classifier = nn.Linear(16, 5)

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.classifier(x.mean((2, 3))), features


try:
    one.ONE([Net(), Net()], image_size=(8, 8))
except TypeError as e:
    print("refused:", e)
"""


def test_one_copied_alone_explains_in_one_sentence_a_classifier_whose_pooling_is_in_forward(tmp_path):
    """one.py alone around a network whose forward pools before a Linear `classifier` (issue 34, 11): the contract
    check says what ONE runs and what its classifier must do, in one sentence, not a matmul shape error."""
    shutil.copy(os.path.join(HERE, "one.py"), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", POOLS_IN_FORWARD], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("refused: "), proc.stdout + proc.stderr[-2000:]
    sentence = proc.stdout[len("refused: "):].strip()
    assert len(sentence.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "ONE runs Net's `stages` in order and then `classifier` on the last stage's output (16x4x4 per " \
        "image)" in sentence, sentence
    assert "make `classifier` do all forward does after the last stage" in sentence and "AdaptiveAvgPool2d" in sentence


@pytest.mark.slow
def test_one_copied_alone_trains_a_users_own_stage_structured_network(copied_alone):
    reports, stderr = copied_alone
    report = reports.get("one", stderr)
    assert report.startswith("trained one"), report.replace("\\n", "\n")
    assert "'ce_gate'" in report and "'kd_s2'" in report and "'gate'" in report and "exported:s0,s1,s2" in report


def test_one_exports_load_as_backbones_and_evaluate_gives_the_runs_figures(tmp_path, capsys):
    results = run_main(one.main, SMOKE + ["--branches", "2", "--branch-at", "1"], tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("s*.pt")) == ["s0.pt", "s1.pt"]
    network = common.load_backbone(str(run / "s1.pt"), "resnet20", 10)  # exactly the backbone, nothing of ONE's
    assert common.count_params(network) == common.count_params(common.build_model("resnet20", 10))
    found = script_module("evaluate").main([str(run / "s0.pt"), str(run / "s1.pt"), str(run / "last.pt")])
    for i in range(2):
        assert found[str(run / f"s{i}.pt")][f"s{i}"][0] == pytest.approx(results["final"][f"s{i}"])
    heads = found[str(run / "last.pt")]  # the method rebuilt from the checkpoint's flags: every head
    assert set(heads) == {"s0", "s1", "ens", "gate", "any"}
    assert all(top1 == pytest.approx(results["final"][head]) for head, (top1, _) in heads.items())


def test_one_resumed_run_equals_the_uninterrupted_one(tmp_path):
    argv = SMOKE + ["--epochs", "2", "--milestones", "1", "--rampup", "2"]  # w(e) and the lr change at epoch 2
    run_main(one.main, argv, tmp_path / "a")
    run_main(one.main, SMOKE + ["--milestones", "1", "--rampup", "2"], tmp_path / "b")
    run_main(one.main, argv + ["--resume"], tmp_path / "b")
    a, b = (without_timing(read_metrics(tmp_path / d)) for d in "ab")
    assert len(a) == 2 and a == b and a[0]["kd_s0"] != 0
    for i in range(3):
        sa, sb = (torch.load(tmp_path / d / f"s{i}.pt", weights_only=True)["state_dict"] for d in "ab")
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_one_trains_under_torchrun_on_two_processes_and_continues_in_one(tmp_path):
    status, output = torchrun("one.py", *DDP, "--out-dir", str(tmp_path))  # 5 steps: an unused parameter would stop
    assert status == 0, output[-3000:]                                      # DDP at the second
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["args"]["world_size"] == 2 and set(results["final"]) == {"s0", "s1", "s2", "ens", "gate", "any"}
    run_main(one.main, DDP + ["--resume", "--epochs", "2"], tmp_path)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]


@pytest.mark.slow
def test_one_end_to_end_reports_every_branch_and_the_ensemble(tmp_path):
    status, output = run_cli("one.py", *TINY, "--out-dir", str(tmp_path))
    assert status == 0, output[-3000:]
    done = output.strip().splitlines()[-1]
    assert done.startswith("done in") and all(f" {h} " in done for h in ("s0", "s1", "s2", "ens", "gate")), done
    results = check_heads(json.loads((tmp_path / "results.json").read_text()), ("s0", "s1", "s2", "ens", "gate"))
    assert results["method"] == "one" and results["args"]["students"] == 3
    assert results["params"]["s0"] == common.count_params(common.build_model("resnet20", 10))  # deployed: one resnet20
    assert sorted(p.name for p in tmp_path.glob("s*.pt")) == ["s0.pt", "s1.pt", "s2.pt"]
    assert set(read_metrics(tmp_path)[0]) >= {"ce_s0", "ce_s2", "ce_gate", "kd_s1", "top1_gate", "top1_ens"}


# ================================================================================================
# Every method file: shared definitions, docstrings, the checklist, the contract, copied alone, exports, recipes
# ================================================================================================

def top_level_source(module, name):
    import ast
    path = os.path.join(HERE, module.__name__ + ".py")
    text = open(path).read()
    for node in ast.parse(text).body:
        if getattr(node, "name", None) == name:
            start = node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else node.lineno
            return "\n".join(text.splitlines()[start - 1:node.end_lineno])
    return None


# definitions every file that uses them carries as the same text (CleanRL's price for standalone files): the
# first two in every method file, the others in each file that defines them (read from the files)
SHARED_IN_EVERY_FILE = ("ensemble_head", "stage_shapes")
SHARED = {name: [m for m in METHOD_MODULES if name in SHARED_IN_EVERY_FILE or top_level_source(m, name)]
          for name in SHARED_IN_EVERY_FILE + ("kd_loss", "FusionModule", "ramp_up", "fusion_loss",
                                                   "student_payload")}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_method_files_shared_definitions_are_the_same_text_in_every_file(name):
    texts = {m.__name__: top_level_source(m, name) for m in SHARED[name]}
    assert all(texts.values()), f"{name} missing in {[n for n, t in texts.items() if not t]}"
    assert len(texts) >= 2, f"{name} is defined in {sorted(texts)} alone: nothing is shared"
    assert len(set(texts.values())) == 1, f"{name} differs between {sorted(texts)}"


def test_method_files_kd_matches_definition():
    z_s, _ = random_logits(1, 6, 5, seed=1)
    z_t, _ = random_logits(1, 6, 5, seed=2)
    z_s, z_t, T = z_s[0], z_t[0], 3.0
    ref = 0.0
    for b in range(6):
        p, q = softmax_loop(z_t[b], T), softmax_loop(z_s[b], T)
        ref += T * T * sum(pc * math.log(pc / qc) for pc, qc in zip(p, q)) / 6
    for module in METHOD_MODULES:
        if module is not mkb_cl:  # MKB-CL distils no logits
            assert module.kd_loss(z_s, z_t, T).item() == pytest.approx(ref, rel=1e-5), module.__name__
    log_p = torch.log_softmax(z_t / T, 1)
    assert kdcl.kd_to_distribution(z_s, log_p, T).item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("module", METHOD_MODULES, ids=lambda m: m.__name__)
def test_method_files_imports_nothing_of_this_project_at_module_level(module):
    import ast
    tree = ast.parse(open(os.path.join(HERE, module.__name__ + ".py")).read())
    for node in tree.body:  # only module-level statements: `import common` inside build/main is the rule
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert not {n.split(".")[0] for n in names} & PROJECT_MODULES, (module.__name__, names)


@pytest.mark.parametrize("module", METHOD_MODULES, ids=lambda m: m.__name__)
def test_method_files_docstring_teaches_and_is_shorter_than_the_code(module):
    doc_lines = len(module.__doc__.strip().splitlines())
    text = open(os.path.join(HERE, module.__name__ + ".py")).read()
    code = text.split('"""', 2)[2].splitlines()
    code_lines = [line for line in code if line.strip() and not line.strip().startswith("#")]
    assert doc_lines < len(code_lines), (doc_lines, len(code_lines))
    assert "Contract" in module.__doc__ and "--lr-warmup 0" in module.__doc__
    assert "Results: the README's table 'Results measured with this code'" in module.__doc__
    assert "mean ± std" not in module.__doc__  # no lab book
    doc = module.__doc__
    assert "Paper: " in "\n".join(doc.splitlines()[:4]) and re.search(r"\b(19|20)\d\d\b", doc[:doc.index("Idea")])
    # teach first: the idea, the loss, the picture and the decisions, then the contract (each a paragraph's start)
    starts = [re.search(rf"^({h})", doc, re.M) for h in ("Idea", "Loss|Model and loss", "Picture", "Decisions",
                                                          "Contract")]
    assert all(starts) and [s.start() for s in starts] == sorted(s.start() for s in starts), starts
    assert not re.search(FORBIDDEN + r"|papers[/]|[.]txt\b|issue[ ]#", doc), "a path outside the repository"


def method_class(module):
    """The file's method: its nn.Module whose first argument is the list of students."""
    found = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, nn.Module)
             and c.__module__ == module.__name__ and list(inspect.signature(c).parameters)[:1] == ["students"]]
    assert len(found) == 1, (module.__name__, found)
    return found[0]


# the flags a method needs to be built in-process on resnet20 students, without files (the others: none)
BUILD_FLAGS = {"kdcl": ["--ensemble", "naive"], "ffsd": ["--students", "3"], "ffcl": ["--no-regularization"]}


def default_method(module, tmp_path, *argv):
    return build_method(module, ["--arch", "resnet20", *BUILD_FLAGS.get(module.__name__, []), *argv], tmp_path)


def test_method_files_new_method_is_everywhere_the_checklist_says(tmp_path):
    """README's "Adding a method", place by place, for every name in common.METHODS: fails naming each place a
    method is missing from (the tables the tests derive from common.METHODS need nothing)."""
    published, bench, evaluate = (script_module(s) for s in ("published", "bench_speed", "evaluate"))
    readers = {f"scripts/{s}.py": script_module(s).METHODS for s in ("compare", "gpu_check")}
    readme = open(os.path.join(HERE, "README.md")).read()
    missing = []
    for name in common.METHODS[1:]:  # vanilla is common.py's
        def check(place, ok):
            if not ok:
                missing.append(f"{name}: {place}")
        module = importlib.import_module(name)
        check(f"{name}.py: add_arguments, build, main",
              all(callable(getattr(module, f, None)) for f in ("add_arguments", "build", "main")))
        recipes = getattr(module, "RECIPES", {})
        check(f"{name}.py: RECIPES['paper'], each value under its source",
              "paper" in recipes and all(isinstance(v, dict) for r in recipes.values() for v in r.values()))
        check("test_methods.py: import " + name, globals().get(name) is module)
        check(f"test_methods.py: its section (tests named test_{name}_...)",
              any(test.startswith(f"test_{name}_") for test in globals()))
        check("test_methods.py: its constructor in COPY_ALONE's build()", f'"{name}": lambda' in COPY_ALONE)
        check("README.md: its row in the methods table", f"| `{name}.py` |" in readme)
        check("scripts/published.py: its paper in PAPERS or rows of its method",
              name in published.PAPERS or any(r["method"] == name for r in published.ROWS))
        for script, methods in readers.items():
            check(f"{script}: reads common.METHODS", name in methods)
        try:
            method = default_method(module, tmp_path, "--students", str(bench.STUDENTS.get(name, 2)))
        except Exception as e:  # any refusal of the count bench_speed.py gives it
            check(f"scripts/bench_speed.py: STUDENTS (it does not build {bench.STUDENTS.get(name, 2)} students: {e})",
                  False)
            continue
        check("method.students, the deployable networks (common.exports and results.json read it)",
              len(getattr(method, "students", [])) > 0)
        check("scripts/evaluate.py: trained_classes() (a checkpoint's class count)",
              evaluate.trained_classes(method.state_dict()) == 10)
    assert not missing, "missing places (README 'Adding a method'):\n" + "\n".join(missing)


@pytest.mark.parametrize("module", METHOD_MODULES, ids=lambda m: m.__name__)
def test_method_files_student_that_breaks_the_contract_is_refused_in_one_sentence(module):
    import torchvision
    plain = [torchvision.models.resnet18(num_classes=5) for _ in range(3)]
    with pytest.raises(TypeError, match=r"must return \(logits, \[stage outputs\]\).*create_feature_extractor") as info:
        module.stage_shapes(plain[0], (32, 32))
    assert len(str(info.value).splitlines()) == 1
    assert "common" not in str(info.value)  # a copied file names nothing its copy lacks
    cls = method_class(module)
    parameters = inspect.signature(cls).parameters
    extra = [5] if "num_classes" in parameters else []
    options = {"pretrained": plain} if "pretrained" in parameters else {}  # FFCL's frozen copies
    with pytest.raises(TypeError, match="`stages`.*`classifier`" if module is one else "create_feature_extractor"):
        cls(plain, *extra, **options)


# each weight flag and the parts it multiplies (DML has none: every part is a term of the paper at weight 1)
WEIGHTS = {"kdcl": {"--lambda-kd": ("kd_",)}, "ffcl": {"--lambda-feature": ("fk_",), "--lambda-response": ("rk_",)},
           "ffsd": {"--lambda-div": ("div_", "sdt_s"), "--lambda-fusion": ("att_", "adapt_", "sdt_leader"),
                    "--lambda-sd": ("sd_",), "--lambda-kl": ("kd_leader",)},
           "mkb_cl": {"--alpha": ("metric_", "verif_")}}
RAMPED = {"ffl": ("kd_",), "fefr": ("kd_",), "one": ("kd_",)}  # the parts the ramp-up w(e) multiplies


def weighted_parts(module, tmp_path, argv=(), epoch=0):
    """(loss, parts) of a fresh default method (seed 0) on a fixed batch, after set_epoch(epoch) (None: never)."""
    torch.manual_seed(0)
    method = default_method(module, tmp_path, *argv).train()
    if epoch is not None and hasattr(method, "set_epoch"):
        method.set_epoch(epoch)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(getattr(method, "num_views", 1))]
    return method(views, torch.arange(4) % 10)


@pytest.mark.parametrize("module", METHOD_MODULES, ids=lambda m: m.__name__)
def test_method_files_each_weight_multiplies_its_parts_alone_and_the_parts_sum_to_the_loss(tmp_path, module):
    """A weight flag doubled doubles exactly the parts it weighs (at a ramp-up below full weight, epoch 0); a
    ramp-up's w(e) multiplies exactly its parts; the loss is the sum of the logged parts."""
    loss, parts = weighted_parts(module, tmp_path)
    assert torch.allclose(loss, sum(parts.values()), rtol=1e-6)
    cases = [(flag, prefixes) for flag, prefixes in WEIGHTS.get(module.__name__, {}).items()]
    for flag, prefixes in cases:
        value = getattr(method_args(module, [], tmp_path), flag[2:].replace("-", "_"))
        _, doubled = weighted_parts(module, tmp_path, [flag, str(2 * value)])
        for name, part in parts.items():
            factor = 2 if name.startswith(prefixes) else 1
            assert doubled[name].item() == pytest.approx(factor * part.item(), rel=1e-4, abs=1e-12), (flag, name)
    if module.__name__ in RAMPED:
        _, full = weighted_parts(module, tmp_path, epoch=None)  # never set: the full weight
        w = module.ramp_up(0, 80)
        for name, part in parts.items():
            factor = w if name.startswith(RAMPED[module.__name__]) else 1
            assert part.item() == pytest.approx(factor * full[name].item(), rel=1e-4, abs=1e-12), name
    assert cases or module.__name__ in RAMPED or module is dml


def test_ffcl_mkb_cl_parts_carry_their_weights(tmp_path):
    method = build_method(ffcl, ["--arch", "resnet20", "--no-regularization", "--lambda-feature", "0.5",
                                 "--lambda-response", "2"], tmp_path).train()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    _, parts = method([x], y)
    z, z_f = method.logits(x)
    assert parts["fk_s0"].item() == pytest.approx(0.5 * ffcl.kd_loss(z[0], z_f, 3.0).item(), rel=1e-5)
    assert parts["rk_s1"].item() == pytest.approx(2 * ffcl.kd_loss(z[1], z[0], 1.0).item(), rel=1e-5)
    m = mkb_method(["resnet20", "resnet20"], alpha=0.2).train()
    _, parts = m([x], y)
    (_, e0), (_, e1) = [net(x, with_embeddings=True) for net in m.students]
    assert parts["metric_s0"].item() == pytest.approx(0.2 * mkb_cl.metric_loss(e0[0], e1[0]).item(), rel=1e-4)
    assert parts["verif_s1"].item() == pytest.approx(
        0.2 * F.cross_entropy(m.verifiers[1][0](e1[0]), y).item(), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("module", METHOD_MODULES, ids=lambda m: m.__name__)
def test_method_files_copied_alone_trains_a_torchvision_student_in_a_plain_loop(copied_alone, module):
    reports, stderr = copied_alone
    report = reports.get(module.__name__, stderr)
    assert report.startswith("trained "), report.replace("\\n", "\n")


@pytest.mark.slow
@pytest.mark.parametrize("module", METHOD_MODULES, ids=lambda m: m.__name__)
def test_method_files_exports_of_a_file_copied_alone_reload_into_the_users_own_students(copied_alone, module, tmp_path):
    reports, stderr = copied_alone
    report = reports.get(module.__name__, stderr)
    exported = re.search(r"exported:(\S+)", report)
    assert exported, report.replace("\\n", "\n")
    # what the file's own export() gives in the project, for as many students as the copy trains (without one,
    # the copy exports nothing: common's default export serves the project)
    expected = default_method(module, tmp_path).export() if "export" in vars(method_class(module)) else {}
    assert set(exported.group(1).split(",")) - {"-"} == set(expected), report


@pytest.mark.slow
@pytest.mark.parametrize("module", METHOD_MODULES, ids=lambda m: m.__name__)
def test_method_files_method_file_alone_says_in_one_sentence_what_its_script_needs(tmp_path, module):
    shutil.copy(os.path.join(HERE, module.__name__ + ".py"), tmp_path)
    proc = subprocess.run([sys.executable, module.__name__ + ".py", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    assert output.startswith(f"error: {module.__name__}.py trains through common.py") and "own training loop" in output


OWN_CLASS = r"""
import importlib, os, sys, textwrap
import torch


class Net(torch.nn.Module):  # the user's own model, nothing of the project: stages, a classifier, (logits, [maps])
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        block = lambda cin, cout, s: torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, s, 1, bias=False),
                                                         torch.nn.BatchNorm2d(cout), torch.nn.ReLU())
        self.stages = torch.nn.ModuleList([block(3, 16, 1), block(16, 32, 2), block(32, 32, 2)])
        self.classifier = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 5))

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.classifier(x), features


def build(name, M):
    nets = lambda k: [Net(i) for i in range(k)]
    return {"dml": lambda: M.DML(nets(2)), "kdcl": lambda: M.KDCL(nets(2)), "ffl": lambda: M.FFL(nets(2), 5),
            "ffcl": lambda: M.FFCL(nets(2), 5, pretrained=nets(2)), "fefr": lambda: M.FEFR(nets(2), 5),
            "ffsd": lambda: M.FFSD(nets(3), 5), "mkb_cl": lambda: M.MKBCL(nets(2), 5),
            "one": lambda: M.ONE(nets(3))}[name]()


def reload(M, payload_path, key):
    payload = torch.load(payload_path, weights_only=True)
    if payload["kind"] == "mkb_network":  # the recipe of MKB-CL's export() docstring, run as written
        doc = M.MKBCL.export.__doc__
        namespace = {"torch": torch, "MKBNetwork": M.MKBNetwork, "MKBHalf": M.MKBHalf, "path": payload_path,
                     "student": Net(100)}
        exec(textwrap.dedent(doc.split("rebuild and load it:\n\n", 1)[1].split("\n\n", 1)[0]), namespace)
        return namespace["net"], f"s{key[len('net'):]}"
    net = Net(100)  # a fresh one of the user's class: different weights until the export's are loaded
    net.load_state_dict(payload["state_dict"])
    return net, key


for name in NAMES:
    folder = os.path.join(ROOT, name)
    sys.path.insert(0, folder)
    M = importlib.import_module(name)
    method = build(name, M)
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.arange(8) % 5
    method.train()
    loss, parts = method([x] * getattr(method, "num_views", 1), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.eval()
    with torch.no_grad():
        heads = method(x)
    keys = []
    for key, payload in method.export().items():
        path = os.path.join(folder, key + ".pt")
        torch.save(payload, path)
        net, head = reload(M, path, key)
        with torch.no_grad():
            out = net.eval()(x)
        logits = out[0] if isinstance(out, tuple) else out
        assert torch.equal(logits, heads[head]), (name, key, (logits - heads[head]).abs().max())
        keys.append(key)
    assert not {"common"} & set(sys.modules), name
    print("reloaded", name, ",".join(keys), flush=True)
    sys.path.remove(folder)
"""


@pytest.mark.slow
def test_method_files_methods_export_reloads_into_the_users_own_class_with_identical_logits(tmp_path):
    """Each method file alone in a folder, the user's own plain model as its students (FFSD: 3, ONE: 3 branches):
    after a step, every payload of export() saved, read back as plain data and loaded into a fresh instance of the
    user's class (MKB-CL: by its export() docstring's recipe, run as written) gives the method's logits exactly."""
    names = [m.__name__ for m in METHOD_MODULES]
    for name in names:
        (tmp_path / name).mkdir()
        shutil.copy(os.path.join(HERE, name + ".py"), tmp_path / name)
    (tmp_path / "loop").mkdir()
    script = tmp_path / "loop" / "own_class.py"
    script.write_text(f"ROOT = {str(tmp_path)!r}\nNAMES = {names!r}\n" + OWN_CLASS)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    reloaded = dict(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("reloaded"))
    expected = {"ffsd": "leader", "mkb_cl": "net0,net1", "one": "s0,s1,s2"}
    assert reloaded == {name: expected.get(name, "s0,s1") for name in names}


@pytest.mark.parametrize("module", METHOD_MODULES, ids=lambda m: m.__name__)
def test_method_files_recipe_sets_flags_its_script_has(module):
    parser = script_parser(module)
    dests = set(vars(parser.parse_args([])))
    assert "paper" in module.RECIPES and set(module.RECIPES) <= {"paper", "paper-imagenet"}
    for name, recipe in module.RECIPES.items():
        recipe = common.recipe_values(module.RECIPES[name])
        assert set(recipe) <= dests, (name, set(recipe) - dests)
        assert recipe["dataset"] == ("imagenet" if name == "paper-imagenet" else "cifar100")
        args = parser.parse_args([])
        for dest, value in recipe.items():  # every value is of its flag's type (as if given on the command line)
            assert type(value) is type(getattr(args, dest)) or {type(value), type(getattr(args, dest))} <= {int, float}


def test_method_files_recipe_value_has_one_source_shown_by_help_and_kept_in_results(tmp_path, capsys):
    for module in METHOD_MODULES:
        for name, recipe in module.RECIPES.items():
            listed = [d for values in recipe.values() for d in values]
            assert len(listed) == len(set(listed)), (module.__name__, name)  # each value once, with one source
            assert all(s.startswith(("paper", "official code", "FFL's official code", "project"))
                       for s in recipe), (module.__name__, name)
    paper = common.recipe_values(ffsd.RECIPES["paper"])
    assert paper["fusion_wd"] == 1e-4 and paper["pad_mode"] == "reflect"
    imagenet = common.recipe_values(ffsd.RECIPES["paper-imagenet"])
    assert (imagenet["lr"], imagenet["milestones"], imagenet["lr_warmup"]) == (0.8, "30,60", 5)  # Sec. IV-A
    assert "30, 60 and 80" in ffsd.__doc__ and "lr 0.1" in ffsd.__doc__  # the official code's, named
    assert "paper-imagenet" not in fefr.RECIPES  # the paper names neither networks nor a recipe for ImageNet
    with pytest.raises(SystemExit):
        ffsd.main(["--recipe", "paper", "--baseline", "--help"])
    assert "official code, data/cifar100.py: --augment crop+flip --pad-mode reflect" in capsys.readouterr().out
    run_main(dml.main, ["--recipe", "paper", *SMOKE], tmp_path)
    args = json.loads((tmp_path / "args.json").read_text())
    assert "--batch-size 64: paper, Sec. 4 (implementation details)" in args["recipe_sources"]
    assert "--wd 0.0005: project (the paper gives no weight decay)" in args["recipe_sources"]


# ================================================================================================
# scripts/bench_speed.py
# ================================================================================================

BENCH_KEYS = ["bare_compute", "conventional", *common.METHODS]


def bench_quick(out, *argv):
    status, output = run_cli(os.path.join("scripts", "bench_speed.py"), "--quick", "--out", str(out), *argv)
    assert status == 0, output[-2000:]
    return json.loads(out.read_text()), output


@pytest.mark.slow
def test_bench_speed_quick_measures_every_method(tmp_path):
    """The benchmark runs every method and both references; how fast is the benchmark's business, not the
    suite's (a shared machine makes any timing assertion flaky)."""
    bench, output = bench_quick(tmp_path / "all.json")
    for key in BENCH_KEYS:
        assert bench[key]["images_per_s"] > 0, key


# ================================================================================================
# scripts/cifar10_jpeg.py
# ================================================================================================

def write_fake_cifar10(root, per_batch=12, seed=0):
    """torchvision's cifar-10-batches-py in the official format (pickled dicts of bytes keys), small: per_batch
    random images in each of data_batch_1..5 and test_batch."""
    import pickle
    import numpy as np
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_cases_per_batch": per_batch,
                                                        b"num_vis": 3072}))
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        # smooth images (as photographs are), so that JPEG keeps them close
        small = rng.integers(0, 256, (per_batch, 3, 4, 4)).astype(np.float32)
        data = np.repeat(np.repeat(small, 8, axis=2), 8, axis=3).astype(np.uint8).reshape(per_batch, 3072)
        labels = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]  # every class in every batch
        batches[name] = (data, labels)
        (folder / name).write_bytes(pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                                  b"filenames": [b"x.png"] * per_batch}))
    return [n.decode() for n in names], batches


def test_cifar10_jpeg_script_turns_a_fake_download_into_the_tables_layout(tmp_path, monkeypatch):
    import io
    import numpy as np
    from PIL import Image, JpegImagePlugin
    names, batches = write_fake_cifar10(tmp_path / "download")
    script = os.path.join("scripts", "cifar10_jpeg.py")
    status, output = run_cli(script, "--cifar", str(tmp_path / "download"), "--out", str(tmp_path / "jpeg"))
    assert status == 0, output
    for split, order in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        counts = {}
        for batch in order:  # numbered per class in the order of the batches
            data, labels = batches[batch]
            for row, label in zip(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels):
                path = tmp_path / "jpeg" / split / names[label] / f"{counts.get(label, 0):04d}.jpg"
                counts[label] = counts.get(label, 0) + 1
                with Image.open(path) as img:  # PIL at quality 75, 4:2:0: its bytes, its tables, close to the pixels
                    assert JpegImagePlugin.get_sampling(img) == 2
                    buffer = io.BytesIO()
                    Image.fromarray(row).save(buffer, "JPEG", quality=75)
                    assert path.read_bytes() == buffer.getvalue()
                    assert np.abs(np.asarray(img).astype(int) - row).mean() < 16  # JPEG error only
        files = sorted(p.relative_to(tmp_path / "jpeg" / split) for p in (tmp_path / "jpeg" / split).rglob("*.jpg"))
        assert len(files) == 12 * len(order) and {p.parts[0] for p in files} <= set(names)
    # the tarball holds the same files, byte for byte the same from the same input; the tests find it
    tars = []
    for i in range(2):
        status, output = run_cli(script, "--cifar", str(tmp_path / "download" / "cifar-10-batches-py"), "--out",
                                 str(tmp_path / f"copy{i}.tar.gz"))
        assert status == 0, output
        tars.append((tmp_path / f"copy{i}.tar.gz").read_bytes())
    assert tars[0] == tars[1]
    with tarfile.open(tmp_path / "copy0.tar.gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    folder = tmp_path / "jpeg"
    assert members == {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.jpg")}
    status, output = run_cli(script, "--cifar", str(tmp_path / "download"), "--out", str(tmp_path / "copy0.tar.gz"))
    assert status == 2 and "already exists" in output and len(output.strip().splitlines()) == 1
    train_x, train_y, *_, classes = common.load_folder(str(tmp_path / "jpeg"), 1)
    assert classes == names  # CIFAR-10's label order is the sorted folder order: the same label numbers


# ================================================================================================
# scripts/compare.py
# ================================================================================================

@pytest.mark.slow
def test_compare_writes_a_table_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "compare"
    argv = ["--methods", "vanilla,dml", "--seeds", "0", "--out-dir", str(out), "--dataset", "synthetic",
            "--limit-train", "128", "--limit-test", "64", "--epochs", "1", "--batch-size", "64",
            "--arch", "resnet20", "--device", "cpu"]
    status, output = run_cli(os.path.join("scripts", "compare.py"), *argv)
    assert status == 0, output[-2000:]
    rows = [line for line in (out / "table.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| method ")]
    assert [row.split("|")[1].strip() for row in rows] == ["vanilla", "dml"]
    finished = {m: out / m / "seed0" / "results.json" for m in ("vanilla", "dml")}
    mtimes = {m: path.stat().st_mtime_ns for m, path in finished.items()}
    # a second identical call trains nothing: both runs are re-used as they are
    status, output = run_cli(os.path.join("scripts", "compare.py"), *argv)
    assert status == 0, output[-2000:]
    assert output.count("finished earlier, re-using") == 2, output
    assert {m: path.stat().st_mtime_ns for m, path in finished.items()} == mtimes
    assert (out / "table.md").exists()
    # --results keeps each run's small summary; --render rebuilds the same table from them alone
    results = tmp_path / "results"
    status, output = run_cli(os.path.join("scripts", "compare.py"), *argv, "--results", str(results))
    assert status == 0, output[-2000:]
    summary = json.loads((results / "dml" / "seed0.json").read_text())
    assert summary["seed"] == 0 and summary["curve"][0]["epoch"] == 1 and "top_share_s0" in summary["curve"][0]
    assert "kd_s0" in summary["curve"][0] and "seconds" not in summary["curve"][0]  # loss parts, no timings
    assert not any(name.endswith(".pt") for _, _, files in os.walk(results) for name in files)
    rows = lambda path: [line for line in path.read_text().splitlines() if line.startswith("| ")]  # noqa: E731
    before = rows(results / "table.md")
    shutil.rmtree(out)  # the runs are gone: only the summaries are left
    status, output = run_cli(os.path.join("scripts", "compare.py"), "--render", str(results))  # printed
    assert status == 0, output[-2000:]
    assert [line for line in output.splitlines() if line.startswith("| ")] == before and len(before) == 3


def script_compare():
    return reproduce.compare  # scripts/compare.py as reproduce.py imports it


COMPARE_TINY = ["--methods", "vanilla", "--seeds", "0", "--dataset", "synthetic", "--limit-train", "200",
                "--limit-test", "100", "--batch-size", "50", "--arch", "resnet20", "--device", "cpu"]


def test_compare_refuses_a_finished_run_of_other_flags_and_keeps_it(tmp_path):
    """Issue 34's case 5: a finished 1-epoch run, then the same command with --epochs 3 --lr 0.05: refused before
    anything trains, in one sentence naming both flags; the run is kept as it was."""
    compare = script_compare()
    run = tmp_path / "out" / "vanilla" / "seed0"
    run.mkdir(parents=True)
    args = compare.planned_args("vanilla", COMPARE_TINY[4:] + ["--epochs", "1", "--seed", "0"])
    results = {"args": args, "final": {"s0": 50.0}, "seed": 0}
    (run / "results.json").write_text(json.dumps(results))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "top1_s0": 50.0}) + "\n")
    status, output = run_cli(os.path.join("scripts", "compare.py"), *COMPARE_TINY, "--epochs", "3", "--lr", "0.05",
                             "--out-dir", str(tmp_path / "out"))
    assert status == 2 and len(output.strip().splitlines()) == 1, output
    assert output.startswith(f"error: {run} holds a run trained with --epochs 1 where this command plans --epochs 3, "
                             f"--lr 0.1 where this command plans --lr 0.05; it is kept: pass another --out-dir")
    assert json.loads((run / "results.json").read_text()) == results and sorted(os.listdir(run)) == [
        "metrics.jsonl", "results.json"]
    # the flags it was trained with, or those that may differ (--device, --quiet), re-use it
    assert compare.differing_flags(args, compare.planned_args("vanilla", COMPARE_TINY[4:] + [
        "--epochs", "1", "--seed", "0", "--quiet", "--device", "cuda"])) == []


def test_compare_writes_summaries_whole_and_names_a_cut_one(tmp_path, monkeypatch):
    """A summary is written to a temporary file, then renamed: a write that fails halfway leaves the old one
    whole (and no temporary file); a summary cut by an older version makes --render say one sentence."""
    compare = script_compare()
    opts = SimpleNamespace(results=str(tmp_path))
    (tmp_path / "vanilla").mkdir()
    whole = tmp_path / "vanilla" / "seed0.json"
    whole.write_text('{"seed": 0}')
    monkeypatch.setattr(compare, "run_summary", lambda opts, method, seed: {"seed": seed, "curve": [object()]})
    with pytest.raises(TypeError):  # not JSON: the write fails after it began
        compare.save_summary(opts, "vanilla", 0)
    assert whole.read_text() == '{"seed": 0}' and os.listdir(tmp_path / "vanilla") == ["seed0.json"]
    whole.write_text('{"seed": 0, "curve": [{"epoch": 1, "top1_s')  # as a write cut in place left it
    status, output = run_cli(os.path.join("scripts", "compare.py"), "--render", str(tmp_path))
    assert status == 2 and len(output.strip().splitlines()) == 1, output
    assert output.startswith(f"error: {whole} is not readable JSON (JSONDecodeError: cut mid-write, or edited); "
                             f"delete it")


def processes_mentioning(text):
    """The pids of live processes whose command line holds `text` (Linux /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def interrupt_and_check(script, argv, out, signal_name):
    """Start `script` (its own session), signal it alone once its first run has started, and check: one sentence,
    no traceback, exit status 128 + the signal, no process of the run left. Returns the sentence."""
    import signal
    import time
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc to find the processes left")
    with open(out / "parent.log", "w") as log:
        parent = subprocess.Popen([sys.executable, os.path.join(HERE, script), *argv], cwd=HERE, stdout=log,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list(out.glob("**/args.json")) and time.time() < deadline and parent.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # inside its first epoch
    assert parent.poll() is None, "the run ended before it was interrupted"
    signum = getattr(signal, signal_name)
    parent.send_signal(signum)  # the parent alone: its children must be ended by it, not by the terminal
    _, err = parent.communicate(timeout=180)
    assert parent.returncode == 128 + signum and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"interrupted ({signal_name}): ended 1 run(s) in "
                                                                  f"progress"), err
    time.sleep(0.5)
    assert processes_mentioning(str(out)) == [], "a run was left running"
    return err


@pytest.mark.slow
def test_compare_interrupted_ends_its_runs_and_the_same_command_continues(tmp_path):
    """Issue 34's case 10: SIGTERM (or Ctrl-C) to compare.py alone mid-run ends its child run, says so in one
    sentence, and the same command then finishes the comparison (no orphan holding the run's lock)."""
    argv = COMPARE_TINY + ["--epochs", "12", "--out-dir", str(tmp_path / "out")]
    interrupt_and_check(os.path.join("scripts", "compare.py"), argv, tmp_path, "SIGTERM")
    status, output = run_cli(os.path.join("scripts", "compare.py"), *argv)
    assert status == 0 and (tmp_path / "out" / "vanilla" / "seed0" / "results.json").exists(), output[-2000:]


def git_status():
    return subprocess.run(["git", "-C", HERE, "status", "--porcelain"], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_compare_render_prints_or_writes_a_path_given_and_leaves_git_status_clean(tmp_path):
    """--render prints the committed table (no file written), --output writes another path, never a tracked one;
    the collapse column re-applies the current check (FFL's seed-2 swing at epoch 16 is none), so it agrees with
    the README."""
    if shutil.which("git") is None or subprocess.run(["git", "-C", HERE, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    before = git_status()
    committed = os.path.join(HERE, "results", "cifar10_2k_resnet20")
    status, output = run_cli(os.path.join("scripts", "compare.py"), "--render", committed)
    assert status == 0 and git_status() == before
    rows = {line.split("|")[1].strip(): line for line in output.splitlines() if line.startswith("| ")}
    assert rows["ffl"].split("|")[9].strip() == "none" and "| collapses |" in rows["method"]
    status, output = run_cli(os.path.join("scripts", "compare.py"), "--render", committed, "--output",
                             os.path.join(committed, "table.md"))
    assert status == 2 and "is a file git tracks" in output and len(output.strip().splitlines()) == 1
    status, output = run_cli(os.path.join("scripts", "compare.py"), "--render", committed, "--output",
                             str(tmp_path / "table.md"))
    assert status == 0 and (tmp_path / "table.md").read_text().count("\n| ") == 10 and git_status() == before
    # a head that gives one class to most images at chance after the warm-up is listed, at its first epoch
    compare = script_module("compare")
    run = {"num_classes": 10, "args": {"warmup_epochs": 1}, "collapsed": {}, "curve": [
        {"epoch": e, "top1_s0": 10.0, "top_share_s0": 0.9, "top1_s1": 50.0, "top_share_s1": 0.9} for e in (1, 2, 3)]}
    assert compare.collapses(run) == {"s0": 2}  # epoch 1 is the warm-up's; s1 is well above chance
    assert compare.collapses({**run, "curve": [{"epoch": 1, "top1_s0": 10.0}], "collapsed": {"s0": 1}}) == {"s0": 1}


# ================================================================================================
# scripts/evaluate.py
# ================================================================================================

def test_evaluate_script_gives_a_runs_final_top1_from_its_exports_and_its_checkpoint(tmp_path, capsys):
    results = run_main(dml.main, SMOKE, tmp_path / "run")
    assert "final_top5" not in results and not any(k.startswith("top5_") for k in read_metrics(tmp_path / "run")[-1])
    evaluate = script_module("evaluate")
    run = tmp_path / "run"
    found = evaluate.main([str(run / "s0.pt"), str(run / "s1.pt"), str(run / "last.pt")])  # the run's data flags
    for i in range(2):
        assert found[str(run / f"s{i}.pt")][f"s{i}"][0] == pytest.approx(results["final"][f"s{i}"])
    heads = found[str(run / "last.pt")]
    assert set(heads) == {"s0", "s1", "ens", "any"}
    for head, (top1, top5) in heads.items():
        assert top1 == pytest.approx(results["final"][head]) and top1 <= top5 <= 100
    assert heads["s0"] == found[str(run / "s0.pt")]["s0"]  # the same network, read either way
    assert "top-5" in capsys.readouterr().out
    # what is not a network saved here, or does not fit the data, ends in one sentence
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "dict.pt")
    torch.save(common.backbone_payload(common.build_model("resnet20", 100)), tmp_path / "c100.pt")
    torch.save(common.backbone_payload(common.build_model("resnet20", 10, 64)), tmp_path / "px64.pt")
    for name, says in [("notes.pt", "not a readable checkpoint"), ("dict.pt", "neither a network"),
                       ("c100.pt", "trained for 100 classes"), ("px64.pt", "trained on 64x64 images")]:
        err = usage_error(capsys, lambda: evaluate.main([str(tmp_path / name), "--dataset", "synthetic"]))
        assert says in err, err


# ================================================================================================
# scripts/gpu_check.py: its CPU rehearsal (--quick), so that it still runs on a GPU machine
# ================================================================================================

GPU_CHECK = os.path.join(HERE, "scripts", "gpu_check.py")


@pytest.mark.slow
def test_gpu_check_quick_on_cpu_reports_every_part(tmp_path):
    data = ["--data-dir", CIFAR10_JPEG] if os.path.exists(CIFAR10_JPEG) else []
    proc = subprocess.run([sys.executable, GPU_CHECK, "--quick", "--device", "cpu", "--out", str(tmp_path), *data],
                          capture_output=True, text=True, cwd=HERE, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    markdown = (tmp_path / "gpu_check.md").read_text()
    parts = report["parts"]
    assert sorted(parts) == ["a", "b", "c", "d", "e", "f"]
    assert all(f"## {p}. " in markdown for p in parts)
    assert parts["e"]["status"] == "skipped" and "CUDA" in parts["e"]["reason"]  # NCCL, --sync-bn: GPUs only
    assert parts["d"]["status"] == ("ok" if data else "skipped"), parts["d"]
    assert all(parts[p]["status"] == "ok" for p in "abcf"), {p: parts[p].get("error") for p in parts}
    assert parts["a"]["details"]["cuda_available"] in (True, False) and parts["a"]["details"]["torch"]
    runs = parts["b"]["details"]["runs"]
    assert [r["method"] for r in runs] == list(common.METHODS)  # gpu_check reads common.METHODS
    assert all(r["exit"] == 0 and r["finite"] for r in runs)
    assert set(parts["b"]["details"]["skipped_variants"]) == {"--amp off"}  # on CPU the defaults are fp32
    speed = parts["c"]["details"]
    assert set(speed["eager"]["rows"]) == {"bare_compute", "conventional", *common.METHODS}
    assert speed["compile"]["status"] == "skipped" and speed["compile"]["reason"]
    if data:
        accuracy = parts["d"]["details"]["runs"]
        assert set(accuracy) == {"vanilla", "dml", "ffl"} and all(r["exit"] == 0 for r in accuracy.values())
        assert {"s0", "s1", "ens", "fused"} <= set(accuracy["ffl"]["best"])
    assert parts["f"]["details"]["streamed"] > 0


@pytest.mark.slow
def test_gpu_check_stopped_midway_keeps_the_reports_of_the_parts_it_finished(tmp_path):
    import time
    proc = subprocess.Popen([sys.executable, GPU_CHECK, "--quick", "--device", "cpu", "--out", str(tmp_path),
                             "--parts", "a,b"], cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = tmp_path / "gpu_check.json"
    for _ in range(1200):  # until part b has started (part a's report is written by then)
        if report.exists() and json.loads(report.read_text())["parts"]["b"]["status"] == "running":
            break
        time.sleep(0.1)
    proc.terminate()
    assert proc.wait(timeout=60) == 124
    parts = json.loads(report.read_text())["parts"]
    assert parts["a"]["status"] == "ok" and parts["b"]["status"] == "failed" and "stopped" in parts["b"]["error"]
    assert all(parts[p]["status"] == "skipped" for p in "cdef")  # not selected
    assert "## b. " in (tmp_path / "gpu_check.md").read_text()


# ================================================================================================
# scripts/plot.py
# ================================================================================================

def test_plot_draws_the_committed_summaries_and_run_folders(tmp_path):
    plot = script_module("plot")
    out = plot.main([os.path.join(HERE, "results", "cifar10_2k_resnet20"), "--parts", "loss,ce_s*",
                     "--out", str(tmp_path / "curves.png")])
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    groups = plot.group_runs([os.path.join(HERE, "results", "cifar10_2k_resnet20")])
    assert list(groups)[:2] == ["vanilla", "dml"] and all(len(runs) == 3 for runs in groups.values())
    # a run folder (metrics.jsonl) given beside a folder of summaries: kept apart, labelled by where they are
    run = tmp_path / "runs" / "dml_resnet20_synthetic_seed0"
    run.mkdir(parents=True)
    run.joinpath("metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 1.0 / e, "top1_s0": 10.0 * e,
                                                                 "top1_s1": 20.0 * e, "top1_ens": 15.0 * e}) + "\n"
                                                     for e in (1, 2)))
    groups = plot.group_runs([str(run), os.path.join(HERE, "results", "pilot_cifar10_2k_120ep")])
    assert set(groups) == {"dml (runs)", "dml (pilot_cifar10_2k_120ep)", "vanilla (pilot_cifar10_2k_120ep)"}
    assert plot.band(groups["dml (runs)"], lambda r: plot.head_top1(r, "student"))[1] == [15.0, 30.0]
    assert plot.main([str(run), "--out", str(tmp_path / "one.png"), "--head", "ens"]) == str(tmp_path / "one.png")


def test_plot_without_matplotlib_says_so_in_one_sentence(monkeypatch, capsys):
    plot = script_module("plot")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it gives
    err = usage_error(capsys, lambda: plot.main([os.path.join(HERE, "results", "cifar10_2k_resnet20"), "-o", "x.png"]))
    assert "pip install matplotlib" in err


def test_plot_writes_beside_its_input_with_whole_epochs_and_no_empty_zoom(tmp_path, monkeypatch, capsys):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plot, figures = script_module("plot"), []
    closed = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), closed(fig)))
    run = tmp_path / "run"
    run_main(vanilla, SMOKE + ["--epochs", "2"], run)
    assert plot.main([str(run)]) == str(run / "curves.png") and (run / "curves.png").exists()
    axes = figures[-1].axes
    assert len(axes) == 1  # 2 epochs: no zoom of a single epoch
    assert all(float(t).is_integer() for t in axes[0].get_xticks())
    committed = os.path.join(HERE, "results", "cifar10_2k_resnet20")
    if shutil.which("git"):
        err = usage_error(capsys, lambda: plot.main([committed]))  # its curves.png is committed
        assert "is a committed figure; pass -o PATH" in err
    plot.main([committed, "-o", str(tmp_path / "c.png")])
    assert len(figures[-1].axes) == 2 and figures[-1].axes[1].get_title() == "epochs 31-40"


# ================================================================================================
# scripts/published.py, scripts/reproduce.py: published rows, the paper's statistic, verdicts, the runs a table needs
# ================================================================================================

def row_flags(row):
    """{flag: value} of a row's own flags, read as its script reads them."""
    return dict(reproduce.merged(row["method"], row["flags"]))


def find_row(label, table=None):
    return next(r for r in published.ROWS if r["row"] == label and table in (None, r["table"]))


def test_published_rows_have_a_source_and_the_setting_of_their_recipe():
    modules = {m.__name__: m for m in METHOD_MODULES}
    assert {r["method"] for r in published.ROWS} - {"vanilla"} == set(modules)  # every method has rows
    for row in published.ROWS:
        assert set(row) == set(published.FIELDS), row["row"]
        assert row["paper"] in published.PAPERS and len(row["place"]) > 10, row["row"]
        for key in ("published", "spread", "published_gain", "gain_spread"):
            assert row[key] is None or isinstance(row[key], float), (row["row"], key)
        if row["published"] is None:
            assert row["provenance"] and (row["published_gain"] is not None or "not" in row["provenance"]), row["row"]
        setting = reproduce.recipe_of(*row["setting"])  # the row runs a paper's recipe
        flags = row_flags(row)
        assert row["dataset"] == flags.get("--dataset", setting["dataset"]) == reproduce.dataset_of(row), row["row"]
        assert row["archs"] == flags.get("--arch", setting["arch"]), row["row"]
        if row["baseline"] is not None:
            assert row["baseline"]["setting"][1] in modules[row["baseline"]["setting"][0]].RECIPES
    assert len({(r["paper"], r["table"], r["row"]) for r in published.ROWS}) == len(published.ROWS)


def test_published_rows_cite_only_papers():
    for name in ("published.py", "reproduce.py"):
        text = open(os.path.join(HERE, "scripts", name)).read()
        assert not re.search(FORBIDDEN + "|papers[/]", text), name
    for citation in published.PAPERS.values():
        assert re.search(r"20\d\d", citation) and ('"' in citation) and len(citation) > 80, citation
    assert all(r["paper"] in published.PAPERS for r in published.ROWS)


def test_published_mkb_cl_el_is_not_compared_and_one_in_kdcls_imagenet_setting_has_no_rampup():
    """EL is a trained fully-connected layer on the two networks' predictions (MKB-CL, Sec. IV-B): no run here
    measures it, so its rows are shown, not compared, and do not count against the exit status. ONE in KDCL's
    ImageNet setting runs ONE's objective, which has no ramp-up (one.py's paper-imagenet recipe)."""
    for el in (r for r in published.ROWS if r["row"].endswith(", EL")):
        cells = reproduce.judge(el, {"values": [71.45] * 3, "refused": [], "collapsed": []})
        assert cells["figure"].startswith("not compared: EL is a fully-connected layer trained") and \
            cells["judged"] is None
    row = find_row("ONE, ResNet-18, a branch", "2")
    run = reproduce.plan([row], SimpleNamespace(quick=False, seeds=None, data_dir="data", imagenet_dir="in"),
                         [])[reproduce.run_spec(row)]
    assert script_compare().planned_args(run.script, run.flags)["rampup"] == 0


def fake_run(seed, curve, collapsed=None):
    """A run's summary as compare.py keeps it: the per-epoch curve of every head's top-1."""
    return {"seed": seed, "curve": [{"epoch": e + 1, **{f"top1_{h}": v for h, v in heads.items()}}
                                    for e, heads in enumerate(curve)], "collapsed": collapsed or {}}


def leader_runs(leaders, baselines, anys=None):
    """{spec: {seed: summary}} of FFSD's ResNet-32 Table I: one FFSD run per seed (leader and any at their best
    epoch) and its baseline (s0)."""
    row = find_row("ResNet-32 leader")
    curve = lambda s, v: [{"leader": v - 5, "any": 70.0}, {"leader": v, "any": (anys or {}).get(s, 80.0)}]  # noqa
    return {reproduce.run_spec(row): {s: fake_run(s, curve(s, v)) for s, v in enumerate(leaders)},
            reproduce.baseline_spec(row): {s: fake_run(s, [{"s0": v}]) for s, v in enumerate(baselines)}}


def test_reproduce_table_puts_published_and_measured_side_by_side():
    leader, ens = find_row("ResNet-32 leader"), find_row("ResNet-32 Ens")
    rows = [leader, ens]
    done = leader_runs([74.0, 75.0, 76.0], [69.0, 70.0, 71.0])
    measured = {i: reproduce.measure(row, done) for i, row in enumerate(rows)}
    assert measured[0]["ours"] == 75.0 and measured[0]["n"] == 3  # best epochs 74, 75, 76
    assert measured[0]["gain"] == 5.0  # paired by seed: 74 - 69, 75 - 70, 76 - 71
    assert measured[1]["ours"] == 80.0
    verdicts = {i: reproduce.judge(row, measured[i]) for i, row in enumerate(rows)}
    runs = reproduce.plan(rows, SimpleNamespace(quick=False, seeds=None, data_dir="data", imagenet_dir=None), [])
    text = reproduce.render(rows, measured, verdicts, runs)
    line = next(line for line in text.splitlines() if "| ResNet-32 leader [" in line)
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[2:7] == ["leader top-1", "best epoch; mean ± pop. std of 3 runs", "74.85 ± 0.05",
                          "75.00 ± 0.82 (n=3)", "inconclusive (+0.15 ± 1.69 against ±1.00; 6 runs of ours would "
                          "tell)"]  # a spread of 1 point over 3 runs cannot tell 0.15 from 1.0
    assert cells[7:11] == ["+4.90 ± 0.25 over vanilla", "+5.00 ± 0.00 (n=3)", "reproduced (+0.10 ± 0.52 against "
                           "±1.00)", "ffsd --arch resnet32"]
    ens_line = next(line for line in text.splitlines() if "| ResNet-32 Ens [" in line)
    assert "any-student-correct top-1" in ens_line and "| reproduced (+0.07 ± 0.23 against ±1.00) |" in ens_line
    assert "Sources:" in text and published.PAPERS["ffsd"] in text


def test_reproduce_papers_statistic_best_epoch_median_and_population_std_by_hand():
    import statistics
    run = fake_run(0, [{"leader": 70.0, "s0": 60.0, "s1": 62.0}, {"leader": 74.0, "s0": 64.0, "s1": 58.0},
                       {"leader": 72.0, "s0": 64.0, "s1": 56.0}])
    assert reproduce.figure(run, "leader", epoch="best") == 74.0 and reproduce.figure(run, "leader") == 72.0
    assert reproduce.figure(run, "mean", epoch="best") == 61.0 and reproduce.figure(run, "mean") == 60.0
    assert reproduce.figure(run, "fused") is None  # not logged by this run
    # FFSD's README: three ResNet-32 leaders, 74.92, 74.82, 74.82 -> Table I's 74.85 ± 0.05 (population std)
    leaders = [74.92, 74.82, 74.82]
    assert round(reproduce.paper_statistic(leaders, "mean"), 2) == 74.85
    assert round(reproduce.paper_spread(leaders, "population"), 2) == 0.05  # sqrt(0.02 / 9)
    assert round(reproduce.paper_spread(leaders, "sample"), 2) == 0.06  # sqrt(0.02 / 6): not the table's
    assert reproduce.paper_spread([74.0], "population") is None
    assert reproduce.paper_statistic([73.1, 74.6, 73.9, 74.3, 72.0], "median") == 73.9  # KDCL: median of 5
    # a KDCL Table 7 row: the last epoch (not stated), the median of the seeds, gains paired by seed
    row = find_row("ResNet-32 in the pair, General + ICL", "7")
    last = [73.0, 74.0, 75.0, 71.0, 76.0]
    done = {reproduce.run_spec(row): {s: fake_run(s, [{"s0": 99.0}, {"s0": v}]) for s, v in enumerate(last)},
            reproduce.baseline_spec(row): {s: fake_run(s, [{"s0": 80.0}, {"s0": 70.0 + s}]) for s in range(5)}}
    m = reproduce.measure(row, done)
    assert m["ours"] == 74.0 and m["n"] == 5 and m["spread"] == pytest.approx(statistics.stdev(last))
    assert m["gain"] == 3.0  # gains 3, 3, 3, -2, 2: their median (their mean would be 1.8)
    relative = next(r for r in published.ROWS if r["table"] == "7" and r["gain_kind"] == "relative")
    assert reproduce.gain_of(73.74, 71.46, relative["gain_kind"]) == pytest.approx(3.19, abs=0.01)  # MKB-CL's Δ
    assert reproduce.published_gain(relative) == relative["published_gain"]


# The verdict at its edges: ours (one figure per run) against the paper's figure, its ± and its runs

def test_reproduce_verdict_holds_at_the_tolerance_boundary():
    """Reproduced while the whole 90 % interval lies within ±1 point, the boundary included; a hundredth more is
    inconclusive, and an interval wholly beyond it is below (or above)."""
    ours = [75.0, 75.2, 75.4]
    v = reproduce.verdict(75.2, ours, spread=0.1, paper_runs=3)
    assert v.word == "reproduced" and v.d == pytest.approx(0) and 0.2 < v.half < 1 and v.tol == 1.0
    edge = 75.2 - (1.0 - v.half)  # ours - published + half == 1.0 exactly
    assert reproduce.verdict(edge, ours, spread=0.1, paper_runs=3).word == "reproduced"
    assert reproduce.verdict(edge - 0.01, ours, spread=0.1, paper_runs=3).word == "inconclusive"
    below = 75.2 + 1.0 + v.half + 0.01  # ours + half sits 0.01 under published - 1
    assert reproduce.verdict(below, ours, spread=0.1, paper_runs=3).word == "below"
    assert reproduce.verdict(below - 0.02, ours, spread=0.1, paper_runs=3).word == "inconclusive"
    assert reproduce.verdict(75.2 - 1.0 - v.half - 0.01, ours, spread=0.1, paper_runs=3).word == "above"
    doc = " ".join(reproduce.__doc__.split())  # --help states the constants the rule uses
    assert reproduce.TOLERANCE == 1.0 and "a network's accuracy +-1.0 point" in doc and "at most 1.0" in doc
    assert reproduce.ONE_RUN_STD == {"figure": 0.5, "gain": 0.7, "ablation": 0.7} and "std as 0.5 points (0.7" in doc


def test_reproduce_verdict_one_run_is_never_reproduced_but_can_be_below():
    """One run has no spread of its own (ONE_RUN_STD's 0.5 stands in): it can be confidently far off, never
    confirmed; the verdict says how many runs would tell."""
    v = reproduce.verdict(74.85, [74.85], spread=0.05, paper_runs=3, spread_kind="population")
    assert v.word == "inconclusive" and v.needed == 3 and v.std is None
    assert reproduce.verdict(74.85, [74.85]).word == "inconclusive"  # the paper's runs not stated: still one
    assert reproduce.verdict(74.85, [70.0], spread=0.05, paper_runs=3).word == "below"


def test_reproduce_verdict_needs_the_papers_number_of_runs():
    """KDCL's figures are medians of 5: four close runs are inconclusive (five would tell), five reproduce it."""
    runs = [69.8, 69.95, 69.9, 70.0, 69.85]
    four = reproduce.verdict(69.9, runs[:4], paper_runs=5, statistic="median")
    assert four.word == "inconclusive" and four.needed == 5
    assert reproduce.verdict(69.9, runs, paper_runs=5, statistic="median").word == "reproduced"


def test_reproduce_verdict_median_of_five_with_an_outlier_is_inconclusive():
    """The median stays at the paper's figure, but the spread counts the run that fell to 60: inconclusive, with
    the number of runs that spread would need (a reproduction that unstable is no success)."""
    v = reproduce.verdict(74.3, [74.3, 74.1, 74.4, 74.2, 60.0], paper_runs=5, statistic="median")
    assert v.ours == 74.2 and v.word == "inconclusive" and v.needed > 100


def test_reproduce_verdict_60_75_90_is_not_reproduced():
    """Issue 35's case: runs at 60, 75 and 90 average FFSD's 74.85 ± 0.05; the old rule's band grew with their
    spread and called it reproduced."""
    leader = find_row("ResNet-32 leader")
    m = reproduce.measure(leader, leader_runs([60.0, 75.0, 90.0], [69.96] * 3))
    cells = reproduce.judge(leader, m)
    assert cells["figure"].startswith("inconclusive (+0.15 ± 25.29 against ±1.00; 849 runs of ours"), cells


def test_reproduce_a_zero_gain_against_a_published_4_90_is_not_reproduced():
    """The leader at the published 74.85 whose baseline is as good: the figure is reproduced, the claim (+4.90)
    is not: our gain is confidently below it."""
    leader = find_row("ResNet-32 leader")
    cells = reproduce.judge(leader, reproduce.measure(leader, leader_runs([74.8, 74.85, 74.9], [74.8, 74.85, 74.9])))
    assert cells["figure"].startswith("reproduced") and cells["gain"].startswith("below (-4.90"), cells


def test_reproduce_fefr_sign_reversed_ablation_is_not_reproduced():
    """FEFR's text: case A (early fusion only) is 0.31 below the full method, case B 0.04 below. Our paired
    differences of the opposite sign, or of none, are never reproduced: within half the claimed difference."""
    for label, gains in (("case A, early fusion only", [0.08, 0.10, 0.12]), ("case A, early fusion only", [0.0] * 3),
                         ("case B, + reconstruction", [0.04, 0.05, 0.03])):
        row = find_row(f"ResNet-32 pair, {label} against C (all three)")
        done = {reproduce.run_spec(row): {s: fake_run(s, [{"s0": 70.0 + g, "s1": 70.0 + g}]) for s, g in
                                          enumerate(gains)},
                reproduce.baseline_spec(row): {s: fake_run(s, [{"s0": 70.0, "s1": 70.0}]) for s in range(3)}}
        cells = reproduce.judge(row, reproduce.measure(row, done))
        assert cells["judged"] and "reproduced" not in cells["gain"] and reproduce.claim_kind(row) == "ablation"
        assert cells["gain"].startswith("inconclusive") or cells["gain"].startswith("above"), cells
    v = reproduce.verdict(-0.31, [0.30, 0.31, 0.32], "ablation", spread=0.02, paper_runs=3)
    assert v.word == "above" and v.tol == pytest.approx(0.155)  # opposite sign, both sides measured: refuted


def test_reproduce_a_nan_in_a_curve_is_a_failed_run_named():
    leader = find_row("ResNet-32 leader")
    done = leader_runs([74.8, 74.85, 74.9], [70.0] * 3, anys={1: float("nan")})
    done, refused = reproduce.usable_runs(done, reproduce.plan([leader], SimpleNamespace(
        quick=False, seeds=None, data_dir="data", imagenet_dir=None), []))
    cells = reproduce.judge(leader, reproduce.measure(leader, done, refused))
    assert cells["figure"] == "not judged: a run failed: seed 1's top1_any is nan at epoch 2" and not cells["judged"]


def test_reproduce_says_why_a_run_is_missing():
    leader, fused = find_row("ResNet-32 leader"), find_row("ResNet-32 fusion classifier")
    done = leader_runs([74.8, 74.85, 74.9], [])
    assert reproduce.judge(fused, reproduce.measure(fused, done))["figure"] == "not judged: its runs logged no " \
                                                                               "fused top1"
    cells = reproduce.judge(leader, reproduce.measure(leader, done))
    assert cells["figure"].startswith("reproduced") and cells["judged"] is False
    assert cells["gain"] == "not judged: no finished run of its baseline (vanilla) for the seeds of ours"
    assert reproduce.judge(leader, reproduce.measure(leader, {}))["figure"] == "not judged: no finished run of ffsd"


def stale_summary(run, seed, **changed):
    """A summary whose recorded flags are what `run` plans, but `changed`."""
    args = dict(script_compare().planned_args(run.script, run.flags + ["--seed", str(seed)]), **changed)
    return {"seed": seed, "args": args, "collapsed": {}, "curve": [{"epoch": 1, "top1_leader": 74.85,
                                                                     "top1_s0": 70.0}]}


def test_reproduce_a_reused_run_with_another_weight_decay_is_not_judged():
    """A finished run re-used (or rendered from its summary) after the recipe changed: its recorded flags are not
    what the row plans, so it stands for nothing; the cell names the flag."""
    leader = find_row("ResNet-32 leader")
    runs = reproduce.plan([leader], SimpleNamespace(quick=False, seeds=None, data_dir="data", imagenet_dir=None), [])
    run = runs[reproduce.run_spec(leader)]
    done = {reproduce.run_spec(leader): {s: stale_summary(run, s, **({"wd": 5e-4} if s == 1 else {}))
                                         for s in range(3)},
            reproduce.baseline_spec(leader): {s: stale_summary(runs[reproduce.baseline_spec(leader)], s)
                                              for s in range(3)}}
    assert run.flags[run.flags.index("--recipe") + 1] == "paper" and reproduce.recipe_of("ffsd", "paper")["wd"] != 5e-4
    done, refused = reproduce.usable_runs(done, runs)
    cells = reproduce.judge(leader, reproduce.measure(leader, done, refused))
    assert cells["figure"] == "not judged: stale: seed 1 was trained with --wd 0.0005 where this command plans " \
                              "--wd 0.0001", cells
    assert "changed since" in reproduce.code_changed({"commit": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"},
                                                     "ffsd", 0) or "cannot compare" in \
        reproduce.code_changed({"commit": "0" * 40}, "ffsd", 0)  # another commit: its code is not this one


def test_reproduce_refuses_a_run_folder_of_other_flags_before_training(tmp_path, monkeypatch, capsys):
    leader, rows = find_row("ResNet-32 leader", "I"), [r for r in published.ROWS if r["table"] == "I"]
    opts = SimpleNamespace(quick=True, seeds=[0], out_dir=str(tmp_path), jobs=1, results=None)
    runs = reproduce.plan(rows, opts, [])  # under --quick one FFSD run serves the five networks' rows
    run = runs[reproduce.run_spec(leader)]
    folder = tmp_path / run.folder / run.script / "seed0"
    folder.mkdir(parents=True)
    results = {"args": stale_summary(run, 0, lr=0.05)["args"], "final": {}}
    (folder / "results.json").write_text(json.dumps(results))
    monkeypatch.setattr(script_compare(), "run_all", refuse(AssertionError("nothing trains")))
    err = usage_error(capsys, lambda: reproduce.main(["--paper", "ffsd", "--table", "I", "--quick", "--out-dir",
                                                      str(tmp_path)]))
    assert f"{folder} holds a run trained with --lr 0.05 where this command plans --lr 0.1" in err
    assert "it is kept: pass another --out-dir" in err and json.loads((folder / "results.json").read_text()) == results


def test_reproduce_judge_prints_one_line_verdict_first_and_refuses_bad_input(capsys):
    status, output = run_cli(os.path.join("scripts", "reproduce.py"), "--judge", "74.85", "--spread", "0.05",
                             "--paper-runs", "3", "--ours", "74.62,74.91,74.70")  # as a user types it
    assert status == 0 and len(output.strip().splitlines()) == 1 and output.split()[0] == "reproduced", output
    for ours, word in (("60,75,90", "inconclusive"), ("72.1,72.3,71.9", "below"), ("74.8", "inconclusive")):
        assert reproduce.main(["--judge", "74.85", "--spread", "0.05", "--paper-runs", "3", "--ours", ours]) is None
        output = capsys.readouterr().out
        assert len(output.strip().splitlines()) == 1 and output.split()[0] == word, output
        assert "difference" in output and "tolerance of ±1.00" in output
    for bad in (["--judge", "74.85"], ["--judge", "x", "--ours", "1"], ["--judge", "74", "--ours", "1,nan"],
                ["--judge", "74", "--ours", "1", "--spread", "-1"], ["--judge", "74", "--ours", "1", "--paper", "ffsd"],
                ["--judge", "74", "--ours", "1", "--paper-runs", "0"], ["--judge", "74", "--ours", "1,a"]):
        usage_error(capsys, lambda: reproduce.main(bad))


def test_reproduce_exit_status_counts_rows_not_judged(tmp_path, monkeypatch, capsys):
    """0 when every row with a figure to compare was judged (inconclusive is a verdict); 1 with one sentence
    naming how many were not and why (a collapse here); README and --help say the same."""
    def trained(collapse):
        def train(runs, opts):
            return {spec: {s: fake_run(s, [{"s0": 70.0, "s1": 72.0}], {"s0": 3} if collapse and s == 2 else None)
                           for s in run.seeds} for spec, run in runs.items()}, []
        return train
    argv = ["--paper", "kdcl", "--table", "9", "--out-dir", str(tmp_path)]
    monkeypatch.setattr(reproduce, "missing_data", lambda opts, row: None)
    monkeypatch.setattr(reproduce, "train", trained(False))
    reproduce.main(argv)  # returns: every row judged
    assert "not judged" not in (tmp_path / "kdcl-9.md").read_text()
    monkeypatch.setattr(reproduce, "train", trained(True))
    err = one_line_error(capsys, lambda: reproduce.main(argv), code=1)
    assert err == "error: 12 of 12 rows with a figure to compare were not judged (12 with a collapsed run); the " \
                  "table says why for each\n"
    help_text = " ".join(run_cli(os.path.join("scripts", "reproduce.py"), "--help")[1].split())
    exit_status = help_text[help_text.index("Exit status: "):].split(" (a run folder")[0]
    readme = " ".join(open(os.path.join(HERE, "README.md")).read().replace("`", "").split())
    assert len(exit_status) > 100 and exit_status in readme, exit_status


def test_reproduce_exits_non_zero_in_one_sentence_when_a_row_is_skipped_or_fails(tmp_path, monkeypatch, capsys):
    def trained(runs, opts):  # every run finished once, without training
        return {spec: {0: fake_run(0, [{"s0": 70.0, "s1": 72.0}])} for spec in runs}, []
    monkeypatch.setattr(reproduce, "train", trained)
    monkeypatch.setattr(reproduce, "missing_data", lambda opts, row: "CIFAR-100 is not here" if "Naive" in row["row"]
                        else None)
    argv = ["--paper", "kdcl", "--table", "7", "--seeds", "0", "--out-dir", str(tmp_path)]
    err = one_line_error(capsys, lambda: reproduce.main(argv), code=1)
    assert err.startswith("error: 4 of 21 rows with a figure to compare were not judged (4 skipped for missing "
                          "data)")
    table = (tmp_path / "kdcl-7.md").read_text()
    assert table.count("not judged: skipped (CIFAR-100 is not here)") == 4 and "| reproduced (" not in table
    assert table.count("not judged") == 4  # the 17 others ran once: inconclusive, or confidently below
    monkeypatch.setattr(reproduce, "missing_data", lambda opts, row: None)
    monkeypatch.setattr(reproduce, "train", lambda runs, opts: (trained(runs, opts)[0], [next(iter(runs))]))
    err = one_line_error(capsys, lambda: reproduce.main(argv), code=1)
    assert "(21 with a failed run)" in err  # the baseline every row pairs with failed
    assert "not judged: a run failed (see its log.txt)" in (tmp_path / "kdcl-7.md").read_text()


def test_reproduce_render_needs_no_data_and_names_a_cut_summary(tmp_path, capsys):
    """--render reads summaries alone: FFSD's ImageNet rows need no --imagenet-dir; a summary cut mid-write is
    named in one sentence."""
    err = one_line_error(capsys, lambda: reproduce.main(["--paper", "ffsd", "--render", str(tmp_path)]), code=1)
    assert err == "error: 46 of 46 rows with a figure to compare were not judged (46 with a run missing); the " \
                  "table says why for each\n"
    assert "| not judged: no finished run of ffsd |" in (tmp_path / "ffsd.md").read_text()
    leader = find_row("ResNet-32 leader")
    run = reproduce.plan([leader], SimpleNamespace(quick=False, seeds=None, data_dir="d", imagenet_dir=None),
                         [])[reproduce.run_spec(leader)]
    (tmp_path / run.folder / "ffsd").mkdir(parents=True)
    (tmp_path / run.folder / "ffsd" / "seed0.json").write_text('{"seed": 0, "curve": [{"epoch": 1, "top1_lea')
    err = usage_error(capsys, lambda: reproduce.main(["--paper", "ffsd", "--render", str(tmp_path)]))
    assert f"{tmp_path / run.folder / 'ffsd' / 'seed0.json'} is not readable JSON (JSONDecodeError" in err


def distinct(runs):
    return {(run.folder, run.script) for run in runs.values()}


def test_reproduce_plans_one_run_for_every_row_that_needs_it_and_seeds_as_its_rows_average():
    opts = SimpleNamespace(quick=False, seeds=None, data_dir="data", imagenet_dir="imagenet")
    imagenet = [r for r in published.ROWS if r["paper"] == "kdcl" and r["table"] == "2"]
    runs = reproduce.plan(imagenet, opts, [])
    assert len(distinct(runs)) == 7  # vanilla, DML, four ensembles and ONE: one baseline for all thirteen rows
    assert len({id(runs[reproduce.baseline_spec(r)]) for r in imagenet if r["baseline"]}) == 1
    ffsd_rows = [r for r in published.ROWS if r["paper"] == "ffsd" and r["table"] in ("I", "II")]
    runs = reproduce.plan(ffsd_rows, opts, [])
    assert len(distinct(runs)) == 5 + 5 + 2 + 2 + 2  # per network one FFSD run and one baseline; DML, FFL, ONE twice
    baselines = [run for run in runs.values() if run.script == "vanilla"]
    for run in baselines:  # FFSD's recipe's shared flags, given explicitly, and one network
        flag = dict(zip(run.flags, run.flags[1:]))
        assert flag["--students"] == "1" and flag["--milestones"] == "150,225" and "--recipe" not in run.flags
    ffl = next(r for r in ffsd_rows if r["method"] == "ffl" and "ResNet-32" in r["row"])
    leader = next(r for r in ffsd_rows if r["row"] == "ResNet-32 leader")
    assert runs[reproduce.baseline_spec(ffl)] is runs[reproduce.baseline_spec(leader)]
    assert runs[reproduce.baseline_spec(leader)].folder == "vanilla_ffsd-paper_students_1"
    assert runs[reproduce.baseline_spec(leader)].seeds == [0, 1, 2] and runs[reproduce.run_spec(ffl)].seeds == [0]
    one_rows = [r for r in published.ROWS if r["method"] == "one"]  # --paper one: each run as its rows average
    seeds = {(r["paper"], r["table"]): run.seeds for r in one_rows for run in [reproduce.plan(one_rows, opts, [])[
        reproduce.run_spec(r)]]}
    assert seeds == {("ffsd", "II"): [0], ("ffsd", "III"): [0], ("kdcl", "7"): [0, 1, 2, 3, 4], ("kdcl", "2"): [0]}
    quick = reproduce.plan(ffsd_rows, SimpleNamespace(quick=True, seeds=[0]), ["--lr-warmup", "1"])
    assert len(distinct(quick)) == 5  # every network is resnet20 under --quick: ffsd, its baseline, dml, ffl, one
    for run in quick.values():
        assert run.flags.count("--arch") == 1 and run.arch == "resnet20" and "--lr-warmup" in run.flags
        assert run.flags[run.flags.index("--lr-warmup") + 1] == "1"  # the user's flag beats the recipe's 0


def test_reproduce_dml_without_data_exits_in_one_sentence(tmp_path):
    status, output = run_cli(os.path.join("scripts", "reproduce.py"), "--paper", "dml", "--data-dir", str(tmp_path),
                             "--out-dir", str(tmp_path / "out"))
    assert status != 0 and len(output.strip().splitlines()) == 1, output
    assert output.startswith("error: no row of dml can run here: CIFAR-100 is not in") and "ImageNet" in output


@pytest.mark.slow
def test_reproduce_skips_a_row_whose_data_is_missing_in_one_sentence(tmp_path):
    status, output = run_cli(os.path.join("scripts", "reproduce.py"), "--paper", "mkb_cl", "--data-dir",
                             str(tmp_path), "--out-dir", str(tmp_path / "out"))
    assert status == 2 and len(output.strip().splitlines()) == 1, output[-2000:]  # no row can run: one sentence
    assert f"CIFAR-10 is not in {tmp_path} (torchvision's cifar-10-batches-py/): put it there or pass --data-dir" \
        in output and "ImageNet rows need --imagenet-dir" in output
    assert not (tmp_path / "out").exists()  # nothing trained


@pytest.mark.slow
def test_reproduce_quick_runs_a_papers_table_and_renders_it_again(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    status, output = run_cli(os.path.join("scripts", "reproduce.py"), "--paper", "dml", "--table", "7", "--quick",
                             "--jobs", "2", "--out-dir", str(out), "--results", str(results))
    assert status == 0, output[-2000:]
    table = (out / "dml-7.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| 7 |")]
    assert len(lines) == 2 and all("(n=1)" in line and "not judged: --quick" in line for line in lines), table
    method = json.loads((results / "dml_kdcl-paper" / "dml" / "seed0.json").read_text())
    assert method["args"]["milestones"] == "100,150" and method["args"]["epochs"] == 1  # KDCL's setting, shrunk
    baseline = json.loads((results / "vanilla_kdcl-paper" / "vanilla" / "seed0.json").read_text())
    assert baseline["args"]["milestones"] == "100,150" and baseline["args"]["batch_size"] == 50  # KDCL's, given
    assert baseline["args"]["recipe"] is None and baseline["args"]["T"] is None  # explicitly, for vanilla
    shutil.rmtree(out)  # the runs are gone: the summaries give the same rows
    status, output = run_cli(os.path.join("scripts", "reproduce.py"), "--paper", "dml", "--table", "7", "--render",
                             str(results), "--quick")
    assert status == 0, output[-2000:]
    rendered = [line for line in (results / "dml-7.md").read_text().splitlines() if line.startswith("| 7 |")]
    assert [line.split("|")[:7] for line in rendered] == [line.split("|")[:7] for line in lines]
    # rendered as a real reproduction (no --quick), the synthetic one-epoch runs stand for nothing
    status, output = run_cli(os.path.join("scripts", "reproduce.py"), "--paper", "dml", "--table", "7", "--render",
                             str(results))
    assert status == 1 and output.strip().endswith("(2 trained on other data); the table says why for each"), \
        output[-2000:]
    rendered = [line for line in (results / "dml-7.md").read_text().splitlines() if line.startswith("| 7 |")]
    assert all("not judged: trained on synthetic, not cifar100" in line for line in rendered)


@pytest.mark.slow
def test_reproduce_ffsd_quick_prints_verdicts_and_names_ens_any_student_correct(tmp_path):
    status, output = run_cli(os.path.join("scripts", "reproduce.py"), "--paper", "ffsd", "--table", "I", "--quick",
                             "--jobs", "2", "--out-dir", str(tmp_path))
    assert status == 0, output[-3000:]
    header = next(line for line in output.splitlines() if line.startswith("| table |"))
    assert "| verdict |" in header and "| verdict, gain |" in header and "| ran |" in header
    ens = [line for line in output.splitlines() if "| ResNet-56 Ens [" in line]
    assert len(ens) == 1 and "any-student-correct top-1" in ens[0] and "our ens " in ens[0]
    assert "resnet20" in ens[0] and "not judged: --quick" in ens[0]  # what ran, and no verdict on it
    assert "an image counts when either common student is right" in output
    found = list(tmp_path.glob("*/ffsd/seed0/results.json"))
    assert len(found) == 1  # under --quick every network is resnet20: one FFSD run serves the five of Table I
    results = json.loads(found[0].read_text())
    assert "any" in results["final"] and results["args"]["students"] == 3


@pytest.mark.slow
def test_reproduce_interrupted_ends_its_runs_in_one_sentence(tmp_path):
    """SIGINT to reproduce.py alone, while it trains: its run is ended (no orphan to race the re-run), one
    sentence, exit status 130."""
    argv = ["--paper", "dml", "--table", "7", "--quick", "--out-dir", str(tmp_path), "--epochs", "50"]
    interrupt_and_check(os.path.join("scripts", "reproduce.py"), argv, tmp_path, signal_name="SIGINT")


# ================================================================================================
# The repository: no sibling folder or machine path, the README's own-loop snippet
# ================================================================================================

def readme_snippet():
    """The README's own-loop example: the first python block after its 'Use a method in your own loop'."""
    text = open(os.path.join(HERE, "README.md")).read().split("## Use a method in your own loop", 1)[1]
    return text.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_snippet_runs_in_a_folder_holding_only_the_method_file(tmp_path):
    """The snippet as printed, with only ffl.py beside it (no common.py, nothing of the project on the path): it
    trains the user's own plain model, exports s0 and reloads it into that class, with the method's logits."""
    shutil.copy(os.path.join(HERE, "ffl.py"), tmp_path)
    check = ('\nassert torch.allclose(net(x)[0], heads["s0"], atol=1e-6)\nimport sys\n'
             'assert not {"common", "dml"} & set(sys.modules)\nprint("snippet ok")\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", readme_snippet() + check], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("snippet ok"), proc.stdout + proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["ffl.py", "s0.pt"]


def test_readme_own_loop_student_fits_every_method():
    """The README snippet's `Net`, as printed, is a student of every method: each one (ONE cut from it) builds on
    such students and trains a step, so the example holds whichever file is copied."""
    snippet = readme_snippet()
    scope = {"torch": torch, "nn": nn}
    exec(snippet[snippet.index("class Net("):snippet.index("\ntrain_loader")], scope)

    def nets(k):
        return [scope["Net"]() for _ in range(k)]
    build = {"dml": lambda: dml.DML(nets(2)), "kdcl": lambda: kdcl.KDCL(nets(2)), "ffl": lambda: ffl.FFL(nets(2), 10),
             "ffcl": lambda: ffcl.FFCL(nets(2), 10, pretrained=nets(2)), "fefr": lambda: fefr.FEFR(nets(2), 10),
             "ffsd": lambda: ffsd.FFSD(nets(3), 10), "mkb_cl": lambda: mkb_cl.MKBCL(nets(2), 10),
             "one": lambda: one.ONE(nets(3))}
    assert sorted(build) == sorted(m.__name__ for m in METHOD_MODULES)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    for name, make in build.items():
        torch.manual_seed(0)
        method = make().train()
        loss, parts = method([x] * method.num_views, y)
        loss.backward()
        assert torch.isfinite(loss) and parts, name


def test_readme_methods_table_cites_each_paper_as_its_method_files_docstring():
    """Each method's row in the README's table cites the paper of the file's `Paper:` paragraph: its first author
    ("Zhang et al., ") or, where the docstring names no authors, its DOI; a venue whose every word begins a word of
    the docstring's citation after the title (Int. J. -> International Journal); the year."""
    readme = open(os.path.join(HERE, "README.md")).read()
    for module in METHOD_MODULES:
        row = re.search(rf"^\| `{module.__name__}\.py` \| [^|]+ \| ([^|]+) \|", readme, re.M)
        assert row, f"no row for {module.__name__}.py"
        cell, doc = row[1].strip(), module.__doc__
        paper = " ".join(doc[doc.index("Paper:") + len("Paper:"):].split("\n\n")[0].split())
        authors, after_title = paper.split('"')[0].strip(" ,"), paper.split('"', 2)[2]
        year = re.search(r"\b(?:19|20)\d\d\b", after_title)[0]
        assert re.findall(r"\b(?:19|20)\d\d\b", cell) == [year], (module.__name__, cell, year)
        if authors:
            cited = f"{authors.split(',')[0].split()[-1]} et al., "
            assert cell.startswith(cited), (module.__name__, cell, cited)
            venue = cell[len(cited):cell.index(year)]
        else:
            doi = re.search(r"doi:10\.\d+/[^\s,;)]+", paper)[0]
            assert doi in cell, (module.__name__, cell, doi)
            venue = cell[:cell.index(year)]
        words, cited_words = re.findall(r"[A-Za-z]+", venue), re.findall(r"[A-Za-z]+", after_title)
        assert words and all(any(c.lower().startswith(w.lower()) for c in cited_words) for w in words), \
            (module.__name__, venue, after_title)


COMMON_LINES = 2250  # common.py's budget: 1,500 and what its promises cost above that (#33's closing note)
PART_ONE = ("main", "Settings", "fit", "make_optimizers", "train_epoch", "lr_factor", "evaluate", "set_up", "Vanilla",
            "build_model", "BasicBlock", "load_data", "Data", "augment")  # what a method runs in, read top-down


def test_repository_keeps_its_budgets_and_common_py_reads_part_i_first():
    """common.py within its lines, its Part I (what a method runs in) first and at most 750 lines, then one banner
    `# Part II`; no method file over 400 lines."""
    import ast
    text = open(os.path.join(HERE, "common.py")).read()
    lines = text.splitlines()
    banner = [i for i, line in enumerate(lines, 1) if line.startswith("# Part II")]
    assert len(lines) <= COMMON_LINES and len(banner) == 1 and banner[0] <= 750, (len(lines), banner)
    defined = {getattr(n, "name", None): n.lineno for n in ast.parse(text).body}
    assert all(defined[name] < banner[0] for name in PART_ONE), [n for n in PART_ONE if defined[n] > banner[0]]
    assert [defined[n] for n in ("main", "fit", "train_epoch", "evaluate", "set_up", "Vanilla")] == sorted(
        defined[n] for n in ("main", "fit", "train_epoch", "evaluate", "set_up", "Vanilla"))  # in the order a run goes
    for name in METHOD_FILES:
        assert len(open(os.path.join(HERE, name)).read().splitlines()) <= 400, name


def test_repository_every_test_is_named_for_the_file_it_tests():
    """`pytest -k kdcl` finds every KDCL test: a test's name starts with the file it tests (tests of every method
    file: test_method_files_, their ids naming each; of the tree as a whole: test_repository_)."""
    files = ["common", *common.METHODS[1:], "ffl_ffcl_fefr", "method_files", "readme", "license", "citation",
             "repository", *(f[:-3] for f in os.listdir(os.path.join(HERE, "scripts")) if f.endswith(".py"))]
    unnamed = [name for name in globals() if name.startswith("test_") and callable(globals()[name])
               and not name.startswith(tuple(f"test_{f}_" for f in files))]
    assert not unnamed, unnamed


def test_repository_names_no_sibling_folder_or_machine_path():
    """git grep finds none of FORBIDDEN in the tracked files but .ci/run (which points CIFAR10_JPEG at its machine's
    copy)."""
    if shutil.which("git") is None or subprocess.run(["git", "-C", HERE, "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    found = subprocess.run(["git", "-C", HERE, "grep", "-nE", FORBIDDEN, "--", ".", ":!.ci/run"],
                           capture_output=True, text=True).stdout.splitlines()
    assert found == [], found
    assert "CIFAR10_JPEG=" in open(os.path.join(HERE, ".ci", "run")).read()


@pytest.mark.parametrize("name", ["common", *(m.__name__ for m in METHOD_MODULES)])
def test_license_header_in_every_method_file_and_common_names_the_license_files_copyright(name):
    """A file copied alone carries its license: the SPDX line and LICENSE's copyright line in its first five lines,
    above the module docstring (which stays the module's __doc__)."""
    text = open(os.path.join(HERE, "LICENSE")).read()
    assert text.startswith("MIT License\n")
    copyright_line = re.search(r"^Copyright \(c\) \d{4} \S.*$", text, re.M).group()
    head = open(os.path.join(HERE, name + ".py")).read().splitlines()[:5]
    assert "# SPDX-License-Identifier: MIT" in head and "# " + copyright_line in head, head
    assert importlib.import_module(name).__doc__


def test_citation_cff_holds_the_required_keys_and_agrees_with_the_readme_and_license():
    """CITATION.cff read line by line (no YAML parser needed): the keys CFF 1.2.0 requires and ours, the README's
    title, LICENSE's license and holder as its author; where PyYAML is installed, it parses to the same."""
    lines = open(os.path.join(HERE, "CITATION.cff")).read().splitlines()
    assert all(re.match(r"([a-z-]+:( \S.*)?|  - [a-z-]+: \S.*|    [a-z-]+: \S.*)$", line) for line in lines), lines
    top = {m[1]: m[2].strip('"') for m in (re.match(r"([a-z-]+):\s*(.*)$", line) for line in lines) if m}
    assert {"cff-version", "message", "title", "authors", "license", "date-released"} <= set(top), top
    assert top["cff-version"] == "1.2.0" and top["message"] and top["license"] == "MIT"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", top["date-released"]), top["date-released"]
    readme = open(os.path.join(HERE, "README.md")).read()
    assert readme.startswith(f"# {top['title']}\n"), top["title"]
    license_text = open(os.path.join(HERE, "LICENSE")).read()
    holder = re.search(r"^Copyright \(c\) \d{4} (.+)$", license_text, re.M)[1]
    assert license_text.startswith("MIT License\n") and lines[lines.index("authors:") + 1] == f'  - name: "{holder}"'
    try:
        import yaml
    except ImportError:
        return
    parsed = yaml.safe_load(open(os.path.join(HERE, "CITATION.cff")))
    assert parsed["title"] == top["title"] and parsed["authors"] == [{"name": holder}] and parsed["license"] == "MIT"


if __name__ == "__main__":  # the torchrun tests' driver: python test_methods.py MODE OUT
    torchrun_driver(*sys.argv[1:])
