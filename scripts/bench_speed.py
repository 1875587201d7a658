"""Training throughput of every method beside two references, on the device this runs on.

    bare compute   the same students' forward, backward and SGD step on batches already on the device,
                   cross-entropy only: the limit the machine sets for these networks
    conventional   the same students trained from torchvision's CIFAR dataset through a DataLoader with PIL
                   RandomCrop / RandomHorizontalFlip / ToTensor / Normalize: what most research code runs
    vanilla, dml, kdcl, ffl, ffcl, fefr, ffsd, mkb_cl, one
                   this repository's training loop (common.train_epoch: on-device data, augmentation and
                   bookkeeping), each method built exactly as its script builds it

Throughput is student-images per second (images per step x students / seconds), the best of a few timed
rounds after warm-up. Peak memory is the CUDA allocator's peak (not measured on CPU).

    python scripts/bench_speed.py --out bench.json                 # resnet32, batch 128 (README figures)
    python scripts/bench_speed.py --quick --out runs/bench.json    # < 1 minute on 2 CPU cores
    python scripts/bench_speed.py --cifar-dir ./data               # conventional pipeline on real CIFAR-10
"""
import argparse
import importlib
import json
import os
import pickle
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402

METHODS = common.METHODS  # the one list of method scripts
STUDENTS = {"ffsd": 3, "one": 3}  # FFSD: the leader and two common students; ONE: 3 branches; the rest: two


def die(message):
    """A usage error: one sentence on stderr, exit status 2 (as the method scripts do)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="resnet20, batch 64, few steps: for CI and checking")
    p.add_argument("--arch", default=None, help="student architecture (default resnet32; resnet20 with --quick)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (64 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds; the best one counts")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of scripts to measure")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the methods' training step")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--cifar-dir", default=None, help="torchvision CIFAR-10 root for the conventional pipeline "
                                                     "(default: the synthetic images written in its format)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    a = p.parse_args()
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    a.device = "cuda" if cuda else "cpu"
    defaults = dict(arch="resnet20", batch_size=64, steps=3, rounds=2, warmup=2) if a.quick else \
        dict(arch="resnet32", batch_size=128, steps=50 if cuda else 10, rounds=3 if cuda else 2,
             warmup=10 if cuda else 3)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_round(run_round, device, rounds):
    """Seconds of the fastest round, and the CUDA peak memory (MiB) over all of them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        run_round()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return min(times), peak


def method_args(name, opts, students, out_dir, extra=()):
    parser = common.make_parser()
    module = None if name == "vanilla" else importlib.import_module(name)
    if module is not None:
        module.add_arguments(parser)
    argv = ["--arch", opts.arch, "--students", str(students), "--dataset", "synthetic", "--device", opts.device,
            "--batch-size", str(opts.batch_size), "--out-dir", out_dir, *extra]
    if opts.compile:
        argv.append("--compile")
    args = parser.parse_args(argv)
    common.check_args(args)
    return module, args, common.derive_settings(args)


def measure_method(name, opts, data, tmp):
    students = STUDENTS.get(name, 2)
    extra = []
    if name == "ffcl":  # its frozen pre-trained copies cost a forward each: give it real (fresh) ones
        paths = []
        for i in range(students):
            paths.append(os.path.join(tmp, f"pre{i}.pt"))
            common.atomic_save(common.backbone_payload(common.build_model(opts.arch, data.num_classes)), paths[-1])
        extra = ["--pretrained", ",".join(paths)]
    if name == "kdcl":
        extra = ["--holdout-per-class", "2"]
    module, args, settings = method_args(name, opts, students, os.path.join(tmp, name), extra)
    torch.manual_seed(0)
    method = (common.Vanilla(common.build_students(args, data)) if module is None
              else module.build(args, data)).to(data.device)
    if settings.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizers = common.make_optimizers(method, args)
    step_fn = torch.compile(method) if args.compile else method
    gen = torch.Generator(device=data.device).manual_seed(0)
    views = getattr(method, "num_views", 1)
    if hasattr(method, "set_epoch"):
        method.set_epoch(10)  # past every warm-up, so each term is computed
    method.train()

    def run(steps):  # at epoch 10: past the lr warm-up too
        batches, lr_at = data.train_batches(gen, opts.batch_size, steps, views), lambda i: 1.0
        losses = common.train_epoch(step_fn, optimizers, batches, lr_at, settings,
                                    common.Progress(False, 10, args.epochs, steps, opts.batch_size))
        float(losses.totals().sum())

    run(opts.warmup)
    seconds, peak = best_round(lambda: run(opts.steps), data.device, opts.rounds)
    return {"images_per_s": opts.steps * opts.batch_size * students / seconds, "students": students,
            "peak_mem_mib": peak, "params": common.count_params(method)}


def plain_students(opts, data, students):
    """The students alone, on the device, with SGD and a step that is cross-entropy, backward, update."""
    _, args, settings = method_args("vanilla", opts, students, "unused")
    torch.manual_seed(0)
    nets = torch.nn.ModuleList(common.build_students(args, data)).to(data.device)
    memory_format = torch.channels_last if settings.channels_last else torch.preserve_format
    nets.to(memory_format=memory_format)
    opt = torch.optim.SGD(nets.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step(x, y):
        with torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss = sum(F.cross_entropy(net(x)[0], y) for net in nets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, memory_format


def measure_bare(opts, data, students=2):
    """The students alone: CE, forward, backward, SGD step, on batches made once on the device."""
    step, memory_format = plain_students(opts, data, students)
    x = data.normalize(data.train_x[:opts.batch_size]).contiguous(memory_format=memory_format)
    y = data.train_y[:opts.batch_size]

    def run(steps):
        for _ in range(steps):
            step(x, y)

    run(opts.warmup)
    seconds, peak = best_round(lambda: run(opts.steps), data.device, opts.rounds)
    return {"images_per_s": opts.steps * opts.batch_size * students / seconds, "students": students,
            "peak_mem_mib": peak}


def write_cifar_format(data, root):
    """The synthetic images as torchvision's CIFAR-10 python files, so torchvision's own dataset reads them."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    x = data.train_x.cpu().permute(0, 2, 3, 1).reshape(len(data.train_x), -1).numpy()
    y = data.train_y.cpu().tolist()
    for i in range(5):
        with open(os.path.join(folder, f"data_batch_{i + 1}"), "wb") as f:
            pickle.dump({"data": x[i::5], "labels": y[i::5]}, f)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({"data": x[:10], "labels": y[:10]}, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [str(c) for c in range(data.num_classes)]}, f)


def measure_conventional(opts, data, tmp, students=2):
    """torchvision CIFAR10 -> DataLoader(workers, PIL transforms) -> students, CE: the usual research loop."""
    import torchvision
    import torchvision.transforms as T

    class LocalCIFAR10(torchvision.datasets.CIFAR10):
        # our re-written files have other checksums than the official ones; nothing else differs
        def _check_integrity(self):
            return True

        def _load_meta(self):
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    root = opts.cifar_dir
    if root is None:
        root = os.path.join(tmp, "cifar")
        write_cifar_format(data, root)
    mean, std = common.CIFAR_STATS["cifar10"]
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    dataset = LocalCIFAR10(root, train=True, transform=transform, download=False)
    device = data.device
    loader = torch.utils.data.DataLoader(dataset, batch_size=opts.batch_size, shuffle=True, drop_last=True,
                                         num_workers=opts.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=opts.workers > 0)
    step, memory_format = plain_students(opts, data, students)
    batches = iter(())

    def run(steps):
        nonlocal batches
        for _ in range(steps):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            step(x.to(device, non_blocking=True).contiguous(memory_format=memory_format),
                 y.to(device, non_blocking=True))

    run(opts.warmup)
    seconds, peak = best_round(lambda: run(opts.steps), device, opts.rounds)
    return {"images_per_s": opts.steps * opts.batch_size * students / seconds, "students": students,
            "peak_mem_mib": peak, "workers": opts.workers}


def main():
    opts = parse()
    methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        die(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    device = torch.device(opts.device)
    classes = 10 if opts.quick else 100
    n = max(opts.batch_size * max(opts.steps, opts.warmup) + 2 * classes, 1000)
    xtr, ytr, xte, yte, nc = common.synthetic(n_train=n, n_test=100, num_classes=classes)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("bare_compute", lambda d: measure_bare(opts, d)),
                ("conventional", lambda d: measure_conventional(opts, d, tmp))]
        rows += [(m, lambda d, m=m: measure_method(m, opts, d, tmp)) for m in methods]
        for name, measure in rows:
            data = common.Data(xtr, ytr, xte, yte, nc, device)  # fresh: KDCL holds images out of it
            results[name] = measure(data)
            print(f"  {name:13s} {results[name]['images_per_s']:9.0f} student-img/s", file=sys.stderr, flush=True)
    results["meta"] = {"device": common.device_name(device), "torch": torch.__version__,
                       "torchvision": common.tv_version(), "arch": opts.arch, "batch_size": opts.batch_size,
                       "steps": opts.steps, "rounds": opts.rounds, "warmup": opts.warmup, "quick": opts.quick,
                       "compile": opts.compile, "amp": "bf16" if device.type == "cuda" else "off",
                       "date": time.strftime("%Y-%m-%d")}
    vanilla = results.get("vanilla", {}).get("images_per_s")

    print(f"\n{opts.arch}, batch {opts.batch_size}, {results['meta']['device']}, torch {torch.__version__}")
    print(f"{'':14s}{'student-img/s':>14s}{'vs vanilla':>12s}{'peak MiB':>10s}")
    for name, r in results.items():
        if name == "meta":
            continue
        rel = f"{r['images_per_s'] / vanilla:.2f}" if vanilla else "-"
        mem = f"{r['peak_mem_mib']:.0f}" if r.get("peak_mem_mib") else "-"
        print(f"{name + ' (' + str(r['students']) + ')':14s}{r['images_per_s']:14.0f}{rel:>12s}{mem:>10s}")
    if opts.out:
        os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
        with open(opts.out, "w") as f:
            json.dump(results, f, indent=2)
    if vanilla:
        print(f"vanilla: {vanilla / results['bare_compute']['images_per_s']:.2f} x bare compute, "
              f"{vanilla / results['conventional']['images_per_s']:.2f} x the conventional pipeline")


if __name__ == "__main__":
    main()
