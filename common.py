"""Shared code for every method: the run, the train/eval loop, checkpoints, backbones, data, torchrun, flags.

Run alone it trains K independent students, the *vanilla* baseline every method is compared with (a method
script trains it with its own recipe too: `python ffsd.py --recipe paper --baseline`):

    python common.py --arch resnet32 --students 2                 # CIFAR-100
    python common.py --dataset synthetic --epochs 2 --arch resnet20   # zero-setup demo on CPU
    torchrun --standalone --nproc_per_node=4 common.py --arch resnet32   # 4 GPUs (every script; see torchrun below)

Reading path, top to bottom, in the order a run goes: main() (flags, settings, data, method, fit), Settings
(what the loop derives from the flags, made once by derive_settings), fit() (the epochs), train_epoch() (the
step: lr -> loss, parts = method(views, y) -> zero_grad -> backward -> step), the learning rate, evaluation.
Everything else is below the one banner that follows them: the plumbing of the run and the loop, vanilla,
checkpoints, the run folder (its lock, what a resumed run keeps, interrupts), backbones, data, torchrun, flags,
errors.

The method contract (duck-typed; every method file states it again in short, for whoever copies that file
alone into another project: a method file needs nothing from here for its modules and loss):

    student                   any nn.Module whose forward(x) returns (logits, [stage outputs, shallow to deep]),
                              checked when a method is built; `as_student(model)` makes one of any torchvision
                              classifier, `build_model(arch)` gives one of the zoo below
    method(views, y)          training: views is a list of `method.num_views` batches (B, 3, H, W) of the same
                              images, each augmented on its own; returns (loss, {name: part}), every part already
                              weighted, so that loss = sum(parts) and `kd_s0` means the same in every method
    method(x)                 evaluation: {head: logits}: s0, s1, ... (each student), ens (log of the mean of
                              their softmax), and the method's own heads (fused, leader, gate)
    optional:
    method.num_views          how many independently augmented views a step gets (default 1)
    method.primary_head       the head whose best epoch is saved as best.pt (default `ens`)
    method.any_correct_heads  the heads whose any-correct top-1 is logged as head `any` (default: every s<k>)
    method.param_groups()     SGD parameter groups, e.g. a fusion module with its own weight decay
                              (default: every trainable parameter with --wd)
    method.extra_optimizer()  a second optimizer over the parameters the groups leave out (FFSD's Adam);
                              stepped after the same backward, with the same lr schedule and warm-up
    method.set_epoch(epoch)   called before each training epoch (counted from 0) to set ramp-up weights; they
                              are tensors changed in place (no recompile under torch.compile), and a loop that
                              never calls it trains at the full weights
    method.epoch_end(epoch, data)     called after each training epoch; may return {name: float} to log
    method.export()           {name: payload} of deployable models as plain data (every method file has one),
                              saved as OUT/<name>.pt at the end with the run's preprocessing added (exports;
                              default: every student in method.students as OUT/s<i>.pt)
"""
import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

METHODS = ("vanilla", "dml", "kdcl", "ffl", "ffcl", "fefr", "ffsd", "mkb_cl", "one")  # README: "Adding a method"


def main(name="vanilla", add_arguments=None, build=None, argv=None, doc=None):
    """A script's run: flags, settings, data, method (a method file passes its name, add_arguments and build), then
    fit(). An error a user can cause ends in one sentence and a non-zero exit status (stop(), below)."""
    catch_interrupts()  # Ctrl-C and SIGTERM end the run in one sentence (stop()), never inside a file's write
    args, recipe = parse_flags(name, add_arguments, argv, doc)  # as given, --recipe's values as their defaults
    name, build = ("vanilla", None) if args.baseline else (name, build)  # --baseline: the students alone
    settings = derive_settings(args, recipe)
    own_group = created = False
    try:
        own_group = start_processes(settings)  # under torchrun: join its process group
        created = agree(settings, lambda: claim_out_dir(args.out_dir) if settings.rank == 0 else False)  # locked
        torch.manual_seed(args.seed)
        data, method = agree(settings, lambda: set_up(args, settings.device, build))
        if settings.rank == 0:  # the flags, the settings made from them, the data's identity
            write_json(os.path.join(args.out_dir, "args.json"), saved_args(args, settings, data))
        announce(name, args, settings, data, method)  # what trains where; a warm-up shortened for a short run
        results = fit(method, data, args, settings, name)
        print(done_line(results, args), flush=True)
    except BaseException as e:
        stop(e, args, settings, own_group, created)  # an error a user can cause: one sentence, an exit status
        raise  # any other error: its traceback
    end_run(own_group, args.out_dir)  # the folder's lock released, the process group left
    return results


@dataclasses.dataclass
class Settings:
    """What the run derives from its flags, made once (derive_settings) and read by the loop; `args` keeps the
    flags as given. args.json, results.json and every checkpoint record both."""
    device: torch.device     # --device; under torchrun each process's GPU is its LOCAL_RANK's
    bf16: bool               # autocast to bfloat16 (--amp; auto: on GPUs)
    channels_last: bool      # the memory layout of images and weights (on GPUs)
    rank: int                # this process under torchrun (0 alone) ...
    world_size: int          # ... of this many (1 alone)
    distributed: bool        # started by torchrun, even as its only process
    milestone_epochs: list   # --milestones in epochs
    warmup_epochs: float     # the warm-up the run gets: --lr-warmup, shortened for short runs (effective_warmup)
    archs: list              # --arch, one name per student
    recipe: dict             # --recipe's values as flags, those given otherwise, their sources (recorded)


def derive_settings(args, recipe=None) -> Settings:
    """The run's settings from its flags (check_args has refused what this machine or torchrun cannot do)."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    distributed = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun, even with one process
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if distributed and device.startswith("cuda"):  # each process takes the GPU of its LOCAL_RANK
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    on_gpu = device.startswith("cuda")
    return Settings(device=torch.device(device), bf16=args.amp == "bf16" or (args.amp == "auto" and on_gpu),
                    channels_last=on_gpu, rank=rank, world_size=world_size, distributed=distributed,
                    milestone_epochs=milestone_epochs(args), warmup_epochs=effective_warmup(args),
                    archs=student_archs(args), recipe=recipe or recipe_record(args, {}, {}))


def fit(method, data, args, settings, name="vanilla") -> dict:
    """Train `method` on `data` for --epochs, every head evaluated after each; metrics.jsonl, last.pt, best.pt and
    results.json go to --out-dir (--resume continues its last.pt). Under torchrun every process calls it and
    returns the same results; rank 0 evaluates, writes and prints."""
    method = on_device(method, args, settings)  # channels_last on GPUs; --sync-bn under torchrun
    optimizers = make_optimizers(method, args)
    gen = torch.Generator(device=settings.device).manual_seed(args.seed)  # order, augmentation: same everywhere
    record = {"epoch": 0, "best": {}, "best_epoch": {}, "elapsed": 0.0, "final": {}, "final_top5": {}, "collapsed": {}}
    if args.resume:  # that record (epochs done, time, top-1), weights, optimizers, generators: --out-dir's last.pt
        record = restore(os.path.join(args.out_dir, "last.pt"), name, args, method, optimizers, gen)
    step_fn = step_module(method, args, settings)  # torchrun: one DistributedDataParallel; --compile
    batch = min(args.batch_size, len(data.train_y))  # the global batch: each process gets its share
    batch -= batch % settings.world_size
    steps = len(data.train_y) // batch  # the last incomplete batch is dropped; every epoch reshuffles
    saved = saved_args(args, settings, data)  # as args.json and every checkpoint keep them
    log = EpochLog(args, settings, record["epoch"], steps, batch)  # metrics.jsonl, TensorBoard: rank 0's
    for epoch in range(record["epoch"], args.epochs):
        set_lr(optimizers, lr_factor(args, settings, epoch, 0, steps))
        if hasattr(method, "set_epoch"):
            method.set_epoch(epoch)
        method.train()
        t0 = time.perf_counter()
        with stop_on_non_finite(args.out_dir, record, epoch):  # in one sentence, the last checkpoint kept
            with Progress(args, epoch, steps, batch, settings.rank) as progress:
                names, sums = train_epoch(step_fn, optimizers, data, args, settings, gen,
                                          getattr(method, "num_views", 1), batch, steps, epoch, progress)
        seconds = seconds_since(t0, settings.device)  # the device's queue included
        record["elapsed"] += seconds
        record["epoch"] = epoch + 1
        if settings.rank == 0:  # the others wait for it in share_state
            with evaluating_line(args, epoch, len(data.test_y)):  # on a terminal, while the test set runs
                scores = evaluate_epoch(method, data, args, settings, epoch, record)
            line = log.write(epoch, names, sums, scores, seconds, record)
            save_checkpoint(args.out_dir, record, name, method, optimizers, saved, gen)  # last.pt, best.pt
            print(line, flush=True)
        share_state(method, settings)  # every process takes rank 0's parameters and buffers
    log.close()
    results = write_results(method, data, record, args, settings, name, saved, steps * batch)  # rank 0's
    return share_results(results, settings)  # under torchrun: rank 0's, once its files are written


def make_optimizers(method, args):
    """SGD over method.param_groups() (default: every trainable parameter), and method.extra_optimizer() where
    the method has one; every group keeps its base lr, which the schedule scales."""
    groups = method.param_groups() if hasattr(method, "param_groups") else \
        [{"params": [p for p in method.parameters() if p.requires_grad]}]
    try:  # a flag combination torch.optim refuses ends in its one sentence
        optimizers = [torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.nesterov,
                                      weight_decay=args.wd)]
        extra = method.extra_optimizer() if hasattr(method, "extra_optimizer") else None
        optimizers += [extra] if extra is not None else []
    except ValueError as e:
        raise UsageError(f"the optimizer refuses these flags: {e}") from None
    for group in (g for opt in optimizers for g in opt.param_groups):
        group.setdefault("base_lr", group["lr"])
    return optimizers


def train_epoch(step_fn, optimizers, data, args, settings, gen, num_views, batch, steps, epoch, progress=None,
                check_every=50):
    """`steps` optimisation steps over a fresh permutation of the training set (of every batch, this process's
    share). Returns the loss parts' names and their sums over the steps (the mean over the processes), left on the
    device: no step waits for it (LossSums checks them every `check_every` steps, `progress` when it prints)."""
    losses = LossSums(steps, settings.world_size, check_every)
    warming = epoch < settings.warmup_epochs  # the lr changes every step of this epoch
    batches = data.train_batches(gen, batch, steps, num_views, settings.rank, settings.world_size)
    for step, (views, y) in enumerate(batches):
        if warming:
            set_lr(optimizers, lr_factor(args, settings, epoch, step, steps))
        if settings.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss, parts = step_fn(views, y)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.add(step, loss, parts)  # on the device; every check_every steps, NonFinite if one was not finite
        if progress is not None:
            progress.update(step + 1, losses)
    return losses.names, losses.totals()


def lr_factor(args, settings, epoch, step=0, steps=1):
    """The learning rate at `step` of `epoch` (both from 0) as a fraction of --lr: the epoch's schedule value
    times a linear warm-up, per step, over the run's warm-up (--lr-warmup epochs, shortened for a short run:
    effective_warmup): step g of W gets s + (1 - s)(g + 1) / W, s = --lr-warmup-start (0 by default)."""
    if args.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
    else:
        factor = args.gamma ** sum(epoch >= m for m in settings.milestone_epochs)
    warmup_steps = settings.warmup_epochs * steps
    done = epoch * steps + step + 1
    start = args.lr_warmup_start  # KDCL's ImageNet recipe warms up from 0.1 to 0.8: 0.125
    return factor * (start + (1 - start) * done / warmup_steps) if done < warmup_steps else factor


def set_lr(optimizers, factor):
    """Every parameter group of every optimizer (SGD and a method's extra one) at its base lr x factor."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor


def evaluate_epoch(method, data, args, settings, epoch, record):
    """After a training epoch (rank 0 only): the method's epoch_end, then every head on the test set (top-1, and
    top-5 for 100 classes or more) and `any`, the any-correct accuracy of the heads any_correct_heads names (no
    collapse check: it is not a network). Updates the record's final and best figures and collapse record and
    warns once per collapsed head; returns what to log."""
    logged = (method.epoch_end(epoch, data) or {}) if hasattr(method, "epoch_end") else {}
    with_top5 = data.num_classes >= 100  # top-5 is what ImageNet and CIFAR-100 papers report beside top-1
    final, top_share, *top5 = evaluate(method, data, settings, with_top_share=True, with_top5=with_top5,
                                       with_any=True)
    for head, acc in final.items():
        if acc > record["best"].get(head, -1.0):
            record["best"][head], record["best_epoch"][head] = acc, epoch + 1
    warmed_up = epoch >= settings.warmup_epochs  # checked from the first epoch after the warm-up: before it, a
    # network that has barely started often predicts one class for most images without having collapsed
    for head in collapsed_heads(final, top_share, data.num_classes) if warmed_up else []:
        if head not in record["collapsed"]:
            record["collapsed"][head] = epoch + 1
            print(f"warning: epoch {epoch + 1}: head {head} gives one class to {100 * top_share[head]:.0f} % of "
                  f"the test images at {final[head]:.1f} % top-1: its predictions no longer depend on the input "
                  f"(a collapse); try a longer --lr-warmup (now {warmup_said(args, settings)}) or a lower --lr",
                  flush=True)
    record["final"] = final
    if top5:
        record["final_top5"] = top5[0]
    return {**logged, **{f"top1_{h}": a for h, a in final.items()},
            **{f"top5_{h}": a for h, a in (top5[0] if top5 else {}).items()},
            **{f"top_share_{h}": v for h, v in top_share.items()}}


@torch.no_grad()
def evaluate(module, data, settings=None, batch_size=None, with_top_share=False, with_top5=False, with_any=False):
    """Top-1 (%) of every head on the test set. `module`'s eval forward may return a dict of heads, a
    (logits, features) tuple (a plain backbone, head `top1`) or a logits tensor (head `top1`). With `settings`,
    in the run's layout and precision (channels_last, bf16); without, as the tensors come.
    with_top_share: also return, per head, the share of test images given its most common prediction
    (the collapse signal: 1/C for a balanced test set predicted perfectly, 1.0 for a constant network).
    with_top5: also return, per head, top-5 (%): the label is among the five highest logits (or is the top-1
    prediction, so that top-5 >= top-1 even where logits tie). Asked for both, (top1, top_share, top5).
    with_any: also head `any` in top-1 (and top-5), from the same forward: an image counts when any head of
    any_correct_heads(module, heads) is right (an oracle's bound, not an ensemble; no top share)."""
    was_training = module.training
    module.eval()
    correct, correct5, counts, n = {}, {}, {}, len(data.test_y)
    oracle = None
    for x, y in data.test_batches(batch_size):
        if settings is not None and settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(settings.device.type if settings is not None else "cpu", dtype=torch.bfloat16,
                            enabled=settings is not None and settings.bf16):
            out = module(x)
        if not isinstance(out, dict):
            out = {"top1": out[0] if isinstance(out, tuple) else out}
        if oracle is None:
            oracle = any_correct_heads(module, list(out)) if with_any else []
        hit = hit5 = None  # this batch: is any of the oracle's heads right (top-1, top-5)
        for head, logits in out.items():
            pred = logits.argmax(1)
            right = pred == y
            correct[head] = correct.get(head, 0) + right.sum()
            counts[head] = counts.get(head, 0) + torch.bincount(pred, minlength=logits.shape[1])
            if with_top5:  # summed on the device like top-1: no host sync per batch
                top = logits.topk(min(5, logits.shape[1]), 1).indices
                right5 = (top == y[:, None]).any(1) | right
                correct5[head] = correct5.get(head, 0) + right5.sum()
            if head in oracle:
                hit = right if hit is None else hit | right
                hit5 = (right5 if hit5 is None else hit5 | right5) if with_top5 else None
        if hit is not None:
            correct["any"] = correct.get("any", 0) + hit.sum()
            if with_top5:
                correct5["any"] = correct5.get("any", 0) + hit5.sum()
    module.train(was_training)
    top1 = {head: 100.0 * float(c) / n for head, c in correct.items()}
    extras = [{head: float(c.max()) / n for head, c in counts.items()}] if with_top_share else []
    if with_top5:
        extras.append({head: 100.0 * float(c) / n for head, c in correct5.items()})
    return (top1, *extras) if extras else top1


def any_correct_heads(method, heads):
    """The heads head `any` counts: those the method lists in `any_correct_heads` (FFSD: its common students, as
    its "Ens"), else every student head s<k>."""
    listed = getattr(method, "any_correct_heads", None)
    return [h for h in heads if h in listed] if listed is not None else \
        [h for h in heads if h[0] == "s" and h[1:].isdigit()]


def collapsed_heads(top1, top_share, num_classes):
    """Heads whose predictions no longer depend on the input (the collapse students that teach each other fall
    into at full learning rate from the first step): their most common prediction takes at least halfway from a
    balanced share (1/C) to all of the test images, and their top-1 is at most twice chance. The share alone
    would also catch a passing swing of a high learning rate on a small training set, whose top-1 stays well
    above chance; a collapsed head's stays near chance."""
    return [head for head, share in top_share.items()
            if share >= (1 + 1 / num_classes) / 2 and top1[head] <= 2 * 100 / num_classes]


# ##################################################################################################
# Below: what the run, the loop and evaluation above call, behind the names they use there. Sections: the
# run's and the loop's plumbing (set-up, args.json, placement, metrics and TensorBoard, progress, loss sums,
# results); the vanilla baseline; checkpoints; the run folder (its lock, resume checks, interrupts); backbones;
# data; several processes (torchrun); flags; errors.
# New infrastructure goes into its section here, behind a name, so that the step above stays as it reads.
# ##################################################################################################

# ==================================================================================================
# The run's and the loop's plumbing
# ==================================================================================================

def set_up(args, device, build):
    """The data and the method: build(args, data), or vanilla's students without one (a configuration a method's
    modules cannot be built for: one sentence)."""
    data = load_data(args, device)
    if args.resume:  # before build(): FFCL pre-trains in it
        check_same_data(args.out_dir, data)
    try:  # a method refuses a configuration its modules cannot be built for with one sentence (ValueError)
        method = build(args, data) if build is not None else Vanilla(build_students(args, data))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return data, method


def saved_args(args, settings, data):
    """What args.json, results.json and every checkpoint keep as `args`: the flags, then the settings made from
    them (`device` as the one used), then the input size the networks were built for and the data's identity
    (data_identity: what a resumed run checks)."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "recipe"}
    values.update(device=str(settings.device), device_type=settings.device.type, **settings.recipe)
    identity = {"data": data.identity} if getattr(data, "identity", None) else {}
    return {**plain_args(args), **values, "input_size": list(data.image_size), **identity}


def plain_args(args):
    """The flags as plain values (what JSON holds)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def write_json(path, obj):
    """Written whole or not at all (a temporary file, then a rename), like every file a run writes."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with finishing_writes(), open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def seconds_since(t0, device):
    """Seconds since perf_counter() gave t0, once the device has done the work queued on it (CUDA runs ahead)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def announce(name, args, settings, data, method):
    """The run's first line (rank 0 prints; the others are silent), and a warning where it will not train as its
    flags say (warn_if_lr_unreached)."""
    print(headline(name, args, settings, data, method), flush=True)
    warn_if_lr_unreached(args, settings)


def headline(name, args, settings, data, method):
    """The run's first line: what trains on what, where, and where its files go."""
    processes = f"{settings.world_size} processes, each " if settings.world_size > 1 else ""
    return (f"{name}: {args.arch} x{args.students} on {args.dataset} ({len(data.train_y)} train / "
            f"{len(data.test_y)} test images, {data.num_classes} classes), {processes}{device_name(settings.device)}, "
            f"{count_params(method) / 1e6:.2f} M parameters -> {args.out_dir}")


def warn_if_lr_unreached(args, settings):
    """One line (rank 0) when the run will not train as its flags say: a warm-up shortened for a short run
    (effective_warmup), or a schedule whose highest lr stays below 90 % of --lr (a cosine decayed by the
    time the warm-up ends)."""
    if settings.rank != 0:
        return
    if settings.warmup_epochs < args.lr_warmup:
        first, warmup = first_decay_epoch(args), settings.warmup_epochs
        half_of = "the run (--schedule cosine)" if args.schedule == "cosine" else \
            f"the {first} epoch{'s' * (first != 1)} before the first lr decay, so that the run trains at --lr " \
            f"{args.lr:g} before it"
        print(f"warning: --lr-warmup {args.lr_warmup:g} shortened to {warmup:g} epoch{'s' * (warmup != 1)}, half of "
              f"{half_of}", flush=True)
    ends = max(math.ceil(settings.warmup_epochs) - 1, 0)  # the epoch whose last step ends the warm-up
    peak = max(lr_factor(args, settings, epoch, 0, 1) for epoch in range(ends, args.epochs))
    if peak < 0.9:
        print(f"warning: this schedule never reaches --lr {args.lr:g}: its highest lr is {peak * args.lr:.3g} "
              f"({100 * peak:.0f} % of it); give a shorter --lr-warmup or more --epochs", flush=True)


def warmup_said(args, settings):
    """The run's warm-up in words, for the collapse warning."""
    shortened = settings.warmup_epochs < args.lr_warmup
    return f"{settings.warmup_epochs:g}" + (f", shortened from {args.lr_warmup:g} by this short run" * shortened)


def format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def done_line(results, args):
    """The run's last line (inside main's try: a closed output ends in stop()'s sentence, not a traceback)."""
    return (f"done in {format_eta(results['train_seconds'])}: final top-1 {top1_line(results['final'])}  "
            f"(results in {args.out_dir})")


def top1_line(final):
    """{head: top-1} as the run prints it: `s0 71.20  s1 70.85  ens 73.02`."""
    return "  ".join(f"{h} {a:.2f}" for h, a in final.items())


def on_device(method, args, settings):
    """The method on the run's device, in its memory layout (channels_last on GPUs); under torchrun with --sync-bn,
    its batch norms take their statistics over the global batch (CUDA only)."""
    method.to(settings.device)
    if args.sync_bn and settings.distributed:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if settings.channels_last:
        method.to(memory_format=torch.channels_last)
    return method


def step_module(method, args, settings):
    """What a step calls: under torchrun, one DistributedDataParallel around everything that trains (a step's
    gradients are averaged over the processes in its one backward); compiled with --compile."""
    module = method
    if settings.distributed:
        module = nn.parallel.DistributedDataParallel(
            method, device_ids=[settings.device.index] if settings.device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    return torch.compile(module) if args.compile else module


class EpochLog:
    """Rank 0's account of each epoch: a line of metrics.jsonl in --out-dir (made here where missing; a resumed
    run keeps the lines of the epochs its checkpoint holds), the same scalars for TensorBoard (--tensorboard),
    and the line the run prints. The other processes keep none."""

    def __init__(self, args, settings, epoch, steps, batch):
        self.args, self.settings, self.steps, self.batch = args, settings, steps, batch
        self.file = self.board = None
        if settings.rank == 0:
            os.makedirs(args.out_dir, exist_ok=True)
            self.file = open_metrics(os.path.join(args.out_dir, "metrics.jsonl"), epoch)
            self.board = open_tensorboard(args, epoch)

    def write(self, epoch, names, sums, scores, seconds, record):
        """The epoch's line of metrics.jsonl (its lr, mean loss parts, scores, time) and TensorBoard's scalars;
        returns the line to print."""
        args, steps = self.args, self.steps
        lr = args.lr * lr_factor(args, self.settings, epoch, steps - 1, steps)  # where the epoch ended
        line = {"epoch": epoch + 1, "lr": lr, **{n: float(v) / steps for n, v in zip(names, sums.tolist())},
                **scores, "seconds": seconds, "images_per_s": steps * self.batch / seconds}
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()
        write_scalars(self.board, line)
        eta = record["elapsed"] / (epoch + 1) * (args.epochs - epoch - 1)
        return (f"epoch {epoch + 1}/{args.epochs}  lr {lr:.4g}  loss {line['loss']:.4f}  "
                f"top1 {top1_line(record['final'])}  |  {seconds:.1f}s  {line['images_per_s']:.0f} img/s  "
                f"run eta {format_eta(eta)}")

    def close(self):
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()


def open_metrics(path, keep_epochs):
    """metrics.jsonl for writing, keeping the lines of the first `keep_epochs` epochs (those a resumed
    checkpoint holds)."""
    kept, cut = [], []
    if keep_epochs and os.path.exists(path):
        with open(path) as f:
            for number, line in enumerate(f, 1):
                try:
                    if line.strip() and json.loads(line)["epoch"] <= keep_epochs:
                        kept.append(line.rstrip("\n") + "\n")
                except (ValueError, KeyError, TypeError):  # a line cut by a killed write
                    cut.append(str(number))
    if cut:
        print(f"{path}: line{'s' * (len(cut) > 1)} {', '.join(cut)} cut mid-write (not a whole JSON record), "
              f"dropped", flush=True)
    metrics_file = open(path, "w")
    metrics_file.writelines(kept)
    return metrics_file


def tensorboard_dir(path):
    """--tensorboard's value, checked at start-up (when the flags are parsed): the folder, or None, said in one
    sentence, when the tensorboard package is not installed."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        if os.environ.get("RANK", "0") == "0":
            print("warning: --tensorboard needs the tensorboard package (pip install tensorboard); this run "
                  "writes metrics.jsonl only", file=sys.stderr, flush=True)
        return None
    return path


def open_tensorboard(args, epoch):
    """A TensorBoard writer into --tensorboard's folder (None without one); a resumed run drops the events
    written after its checkpoint's `epoch`."""
    if args.tensorboard is None:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(args.tensorboard, purge_step=epoch + 1 if epoch else None)


def write_scalars(board, record):
    """An epoch's line of metrics.jsonl, for TensorBoard (nothing without --tensorboard)."""
    if board is not None:
        for key, value in record.items():
            if key != "epoch":
                board.add_scalar(key, value, record["epoch"])
        board.flush()


TERMINAL_EVERY_S = 1.0  # on a terminal, the progress line is rewritten at most this often
PLAIN_EVERY_S = 60.0  # elsewhere (a log file), a progress line at most this often and every 10 % of an epoch


class Progress:
    """Where the epoch stands, printed by rank 0 (not with --quiet): on a terminal one line rewritten in place,
    at most every TERMINAL_EVERY_S; elsewhere (a log file, a cluster job) a plain line at most every 10 % of the
    epoch's steps or every PLAIN_EVERY_S, whichever is rarer. The host's clock alone decides when to print;
    the running loss is read from the device (a wait) only then. As a context, cleared on leaving it."""

    def __init__(self, args, epoch, steps, batch, rank=0):
        self.on = rank == 0 and not args.quiet
        self.terminal = sys.stdout.isatty()
        self.epoch, self.epochs, self.steps, self.batch = epoch, args.epochs, steps, batch
        self.every_s = TERMINAL_EVERY_S if self.terminal else PLAIN_EVERY_S
        self.every_steps = 1 if self.terminal else math.ceil(steps / 10)
        self.start = self.shown_at = time.perf_counter()
        self.shown_step = self.width = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, done, losses):
        """After `done` steps of the epoch; the epoch's own line follows its last one."""
        if not self.on or done == self.steps:
            return
        now = time.perf_counter()
        if now - self.shown_at < self.every_s or done - self.shown_step < self.every_steps:
            return
        self.shown_at, self.shown_step = now, done
        per_step = (now - self.start) / done
        left = per_step * (self.steps - done)
        run_left = left + per_step * self.steps * (self.epochs - self.epoch - 1)  # training only, as the epoch's
        line = (f"epoch {self.epoch + 1}/{self.epochs}  step {done}/{self.steps}  "
                f"{self.batch / per_step:.0f} img/s  loss {losses.mean_loss(done):.4f}  "
                f"eta {format_eta(left)}  run eta {format_eta(run_left)}")
        if self.terminal:
            print("\r" + line.ljust(self.width), end="", flush=True)
            self.width = max(self.width, len(line))
        else:
            print(line, flush=True)

    def close(self):
        """Clear the terminal's progress line, for the epoch's line or an error."""
        if self.width:
            print("\r" + " " * self.width + "\r", end="", flush=True)
            self.width = 0


@contextlib.contextmanager
def evaluating_line(args, epoch, images):
    """On a terminal (rank 0, not --quiet), one line while an epoch's evaluation runs, cleared after it."""
    line = f"epoch {epoch + 1}/{args.epochs}  evaluating on {images} test images ..."
    shown = not args.quiet and sys.stdout.isatty()
    if shown:
        print("\r" + line, end="", flush=True)
    try:
        yield
    finally:
        if shown:
            print("\r" + " " * len(line) + "\r", end="", flush=True)


class LossSums:
    """The loss and its parts summed over an epoch's steps, on the device. The first step where one of them was
    not finite is recorded there too, and checked every `check_every` steps: by every process together (the
    earliest bad step of any), so that they all stop at the same step."""

    def __init__(self, steps, world_size=1, check_every=50):
        self.steps, self.world_size, self.check_every = steps, world_size, check_every
        self.names = self.sums = self.bad_step = self.bad_parts = None

    def add(self, step, loss, parts):
        values = torch.stack([loss.detach().float()] + [p.detach().float() for p in parts.values()])
        if self.sums is None:
            self.names = ["loss"] + list(parts)
            self.sums, self.bad_step = torch.zeros_like(values), torch.full((), -1, device=values.device)
            self.bad_parts = torch.zeros_like(values, dtype=torch.int32)
        finite = torch.isfinite(values)
        first_bad = (self.bad_step < 0) & ~finite.all()
        self.bad_step = torch.where(first_bad, step, self.bad_step)
        self.bad_parts = torch.where(first_bad, (~finite).int(), self.bad_parts)
        self.sums += values
        if (step + 1) % self.check_every == 0 or step + 1 == self.steps:
            self.check()

    def check(self):
        """NonFinite (the epoch's first bad step, from 1, and a part that went bad there) if there was one."""
        first, which = torch.where(self.bad_step >= 0, self.bad_step, self.steps), self.bad_parts.clone()
        if self.world_size > 1:  # the earliest bad step of any process, and the parts that went bad
            dist.all_reduce(first, dist.ReduceOp.MIN)
            dist.all_reduce(which, dist.ReduceOp.MAX)
        if int(first) < self.steps:
            bad = [n for n, b in zip(self.names, which.tolist()) if b]
            raise NonFinite(next((n for n in bad if n != "loss"), "loss"), int(first) + 1)

    def mean_loss(self, steps_done):
        """The mean loss of the steps done so far, on this process's share (a wait for the device)."""
        return float(self.sums[0]) / steps_done

    def totals(self):
        """The sums over the epoch's steps, each the mean over the processes' shares (what every process logs)."""
        if self.world_size > 1:
            dist.all_reduce(self.sums)
            self.sums /= self.world_size
        return self.sums


class NonFinite(Exception):
    def __init__(self, part, step):
        super().__init__(f"{part} at step {step}")
        self.part, self.step = part, step


@contextlib.contextmanager
def stop_on_non_finite(out_dir, record, epoch):
    """A loss part that became non-finite in this epoch (LossSums' NonFinite, found by every process at the same
    step) ends the run in one sentence that names the last good checkpoint, left untouched."""
    try:
        yield
    except NonFinite as e:
        last_path = os.path.join(out_dir, "last.pt")
        kept = (f"the last good checkpoint {last_path} (epoch {record['epoch']}) is untouched"
                if os.path.exists(last_path) else "no checkpoint had been written")
        raise SharedError(f"training stopped: the loss part '{e.part}' became non-finite at epoch "
                          f"{epoch + 1}, step {e.step}; {kept}") from None


def write_results(method, data, record, args, settings, name, saved, images_per_epoch):
    """The exported networks, each with what its input needs (exports), then results.json (with where and with
    what code it was measured), at the end of a run: rank 0 writes and returns them, the others None."""
    if settings.rank != 0:
        return None
    elapsed = record["elapsed"]
    results = {"method": name, "final": record["final"],
               **({"final_top5": record["final_top5"]} if record.get("final_top5") else {}),  # 100 classes or more
               "best": record["best"], "best_epoch": record["best_epoch"],
               "epochs": args.epochs, "collapsed": record["collapsed"], "train_seconds": elapsed,
               "images_per_s": args.epochs * images_per_epoch / elapsed if elapsed else None,
               "params": {**{f"s{i}": count_params(s) for i, s in enumerate(getattr(method, "students", []))},
                          "total": count_params(method),
                          "trainable": sum(p.numel() for p in method.parameters() if p.requires_grad)},
               "device": (f"{settings.world_size} x " if settings.distributed else "") + device_name(settings.device),
               "torch": torch.__version__, "torchvision": tv_version(), "num_classes": data.num_classes,
               "machine": machine(settings), "code": code_version(),
               "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "args": saved}
    for export_name, payload in exports(method, data, args).items():
        atomic_save(payload, os.path.join(args.out_dir, f"{export_name}.pt"))
    write_json(os.path.join(args.out_dir, "results.json"), results)  # last: a run with results.json is complete
    return results


def exports(method, data=None, args=None) -> dict:
    """What a run deploys: method.export() where the method has one, else every student as s<i>; with `data`,
    each payload also carries what its input needs (data.preprocessing(): normalisation, image size, resizing),
    the class names where known, and the data flags of its test figures (`trained_on`, for evaluate.py)."""
    found = method.export() if hasattr(method, "export") else \
        {f"s{i}": backbone_payload(s) for i, s in enumerate(method.students)}
    if data is None:
        return found
    trained_on = {k: getattr(args, k, None) for k in ("dataset", "limit_train", "limit_test", "stream", "image_size")}
    return {key: {**payload, "preprocess": data.preprocessing(), "classes": data.classes, "trained_on": trained_on}
            for key, payload in found.items()}


def machine(settings):
    """Where a run was measured: the CPU's model and the instruction set torch's kernels use on it (results move
    with both), the GPU, the threads and the processes."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)()
    gpu = torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else None
    return {"cpu": cpu, "cpu_capability": capability, "gpu": gpu, "threads": torch.get_num_threads(),
            "processes": settings.world_size}


def code_version():
    """The git commit of the code that ran and whether its tracked files differed from it (None for both where
    git or the repository is not there)."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*argv):
        try:
            done = subprocess.run(["git", "-C", here, *argv], capture_output=True, text=True, timeout=20,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "modified": None if changes is None else bool(changes)}


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)})"


def tv_version():
    """torchvision's version, without importing it when the run did not (an import costs seconds)."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    import importlib.metadata
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return None


# ==================================================================================================
# The vanilla baseline: independent students, cross-entropy each
# ==================================================================================================

def ensemble_head(logits):
    """The `ens` head: log of the mean of the students' softmax."""
    return torch.stack([z.float().softmax(1) for z in logits]).mean(0).log()


class Vanilla(nn.Module):
    """K students, each trained on the labels alone; nothing passes between them. Every student sees the same
    augmented batch x = views[0]; part ce_s<k>'s gradient reaches student k only (no term links two):

        x --+--> student 0   --> z_0   --> CE(z_0, y)   = ce_s0     --+
            +--> student 1   --> z_1   --> CE(z_1, y)   = ce_s1     --+--> loss = sum_k ce_s<k>   (one backward)
            +--> ...                                                  |
            +--> student K-1 --> z_K-1 --> CE(z_K-1, y) = ce_s<K-1> --+
        evaluation only: ens = log mean_k softmax(z_k)   (no loss term: nothing flows back through it)
    """

    def __init__(self, students):
        super().__init__()
        self.students = nn.ModuleList(students)

    def forward(self, views, y=None):
        if not self.training:
            logits = [s(views)[0] for s in self.students]
            return {**{f"s{i}": z for i, z in enumerate(logits)}, "ens": ensemble_head(logits)}
        parts = {f"ce_s{i}": F.cross_entropy(s(views[0])[0].float(), y) for i, s in enumerate(self.students)}
        return sum(parts.values()), parts


# ==================================================================================================
# Checkpoints
# ==================================================================================================
# Written atomically (temporary file, then rename), plain data only, so `torch.load(weights_only=True)`
# reads them: modules, optimizers, epoch, RNG states, best figures, args. Every record of torch's zip archive
# carries the CRC-32 of its bytes (atomic_save makes sure torch writes them); load_checkpoint checks them, which
# torch.load does not, so a damaged file is refused in one sentence instead of loading wrong weights.

def atomic_save(obj, path):
    """torch.save(obj) into path whole or not at all: a full disk, an error or an interrupt leaves the file that was
    there and no temporary file; Ctrl-C or SIGTERM during the write takes effect once the file is complete."""
    tmp = f"{path}.tmp{os.getpid()}"
    crc = torch.serialization.get_crc32_options()
    try:
        torch.serialization.set_crc32_options(True)  # the checksums load_checkpoint verifies
        with finishing_writes():
            with open(tmp, "wb") as f:  # through a Python file, a full disk is an OSError (torch.save(obj, path):
                torch.save(obj, f)      # a RuntimeError from its zip writer)
            os.replace(tmp, path)
    except BaseException as e:  # a full disk, an interrupt: no half-written temporary file is left beside `path`
        if os.path.exists(tmp):
            os.remove(tmp)
        fault = e if isinstance(e, OSError) else e.__context__  # torch's zip writer raises over a full disk's error
        if isinstance(fault, OSError):
            raise OSError(fault.errno, fault.strerror, path) from None
        if isinstance(fault, KeyboardInterrupt):  # a second Ctrl-C inside the zip writer: the interrupt, not its wrap
            raise fault from None
        raise
    finally:
        torch.serialization.set_crc32_options(crc)


def load_checkpoint(path):
    """A file atomic_save wrote (a checkpoint, an exported network), its checksums verified first. A folder, a
    missing, unreadable or damaged file: one sentence naming it."""
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".pt"))
        raise UsageError(f"{path} is a folder; pass one of its files: {', '.join(found)}" if found else
                         f"{path} is a folder with no saved network or checkpoint in it (no .pt file)")
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist")
    checked = verify_checksums(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                         f"it may be truncated or corrupt") from None
    if not checked and path not in UNCHECKED:  # torch's format before 1.6, or saved with its checksums off
        UNCHECKED.add(path)
        print(f"note: {path} has no checksums (saved by torch's older format, or with them switched off): loaded "
              f"without checking it", flush=True)
    return payload


UNCHECKED = set()  # the files said to load without checksums (once each)


def verify_checksums(path):
    """Every record of a torch zip archive against the CRC-32 written with it: one sentence naming the file where
    one differs (a disk, copy or transfer fault). False for a file without checksums."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return False  # torch's format before 1.6 (torch.load says if it is no checkpoint at all)
    try:
        with zipfile.ZipFile(path) as archive:
            if all(r.CRC == 0 for r in archive.infolist() if r.file_size):
                return False  # written with torch.serialization.set_crc32_options(False)
            bad = archive.testzip()
    except Exception as e:  # a damaged directory of the archive
        raise UsageError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                         f"it may be truncated or corrupt") from None
    if bad is not None:
        raise UsageError(f"{path} is damaged: its part {bad} no longer matches the checksum written with it (a disk, "
                         f"copy or transfer fault); replace it with a good copy")
    return True


def peek_checkpoint(path):
    """A checkpoint's record and flags without reading its tensors (mapped, not loaded, and not verified); None
    where there is no readable one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None


def save_checkpoint(out_dir, record, name, method, optimizers, saved, gen):
    """After an epoch: last.pt, everything restore() needs to continue the run (the run's record, the weights,
    the optimizers, the generators, and `saved`: the flags and settings, as args.json holds them), and the same
    as best.pt when the epoch is the best yet of the method's primary head (method.primary_head, else ens; never
    `any`). An interrupt takes effect once both are written, so that they agree."""
    device = gen.device
    ckpt = {**record, "method": name, "model": method.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers], "args": saved,
            "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state().cpu(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}
    final, primary = record["final"], getattr(method, "primary_head", None)
    key = primary if primary in final else ("ens" if "ens" in final else next(h for h in final if h != "any"))
    with finishing_writes():
        atomic_save(ckpt, os.path.join(out_dir, "last.pt"))
        if record["best_epoch"].get(key) == record["epoch"]:
            atomic_save(ckpt, os.path.join(out_dir, "best.pt"))


# what a checkpoint carries on
RUN_RECORD = ("epoch", "best", "best_epoch", "elapsed", "final", "final_top5", "collapsed")


def restore(path, name, args, method, optimizers, gen):
    """Load a last.pt into the method, its optimizers and the generators; return the run's record. A run that has
    trained its --epochs but misses results.json or an export (a fault or an interrupt at the end) gets them
    written by fit(), nothing trained."""
    ckpt = load_checkpoint(path)
    check_resumed_run(ckpt, path, name, args)  # check_args has checked the same: here for any other caller of fit
    try:
        method.load_state_dict(ckpt["model"])
        for opt, state in zip(optimizers, ckpt["optimizers"], strict=True):
            opt.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UsageError(f"{path} does not match this model ({str(e).splitlines()[0][:200]})") from None
    torch.set_rng_state(ckpt["rng"]["torch"])
    gen.set_state(ckpt["rng"]["gen"].to(gen.get_state().device))
    if gen.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], gen.device)
    done, out_dir = ckpt["epoch"], os.path.dirname(path)
    missing = [f for f in ["results.json"] + [f"{n}.pt" for n in exports(method)]
               if not os.path.exists(os.path.join(out_dir, f))] if done == args.epochs else []
    if missing:
        print(f"{path} has trained its {done} epoch{'s' * (done != 1)}: writing what the run did not, "
              f"{', '.join(missing)} (nothing is trained)")
    elif done >= args.epochs:
        raise UsageError(f"{path} already finished {done} epoch{'s' * (done != 1)}; raise --epochs to train further")
    else:
        print(f"resumed {path} at epoch {done}{schedule_change(args, ckpt['args'], done)}")
    return {key: ckpt.get(key, {}) for key in RUN_RECORD}


def schedule_change(args, saved, done):
    """What a resumed run's other --epochs does to the learning-rate schedule, to be said ('' when the same)."""
    before = saved.get("epochs", args.epochs)
    if before == args.epochs:
        return ""
    old = argparse.Namespace(**{**vars(args), "epochs": before})
    milestones = [milestone_epochs(a) for a in (args, old)]
    lr = [args.lr * lr_factor(a, argparse.Namespace(milestone_epochs=m, warmup_epochs=effective_warmup(a)), done, 0,
                              10 ** 6) for a, m in zip((args, old), milestones)]  # where epoch done + 1 starts
    what = (f"the cosine now ends at epoch {args.epochs}" if args.schedule == "cosine" else
            f"milestones at epochs {', '.join(map(str, milestones[0])) or 'none'} (were "
            f"{', '.join(map(str, milestones[1])) or 'none'})")
    return (f", with --epochs {args.epochs} (the run was started for {before}): the learning-rate schedule is that of "
            f"{args.epochs} epochs, {what}; epoch {done + 1} starts at lr {lr[0]:.4g}" +
            (f" (it would have been {lr[1]:.4g})" if f"{lr[0]:.4g}" != f"{lr[1]:.4g}" else " either way"))


# ==================================================================================================
# The run folder: one run at a time, what a resumed run keeps, interrupts
# ==================================================================================================
# Rank 0 holds OUT/run.lock from its start to its end (claim_out_dir, release_out_dir): a second run into the
# folder stops in one sentence before it writes anything. A resumed run takes the flags it is not given from
# its checkpoint and refuses, naming them, those given otherwise (but for RESUME_MAY_CHANGE), then checks that
# its data is the run's (data_identity). Ctrl-C and SIGTERM raise Interrupted where the run is, except inside a
# file's write (finishing_writes), which completes first; stop() says it in one sentence.

LOCK = "run.lock"  # JSON: the holder's pid, host, start time (and its process's, against pid reuse), command
HELD_LOCKS = {}  # lock path: what this process wrote in it


def claim_out_dir(out_dir):
    """Rank 0's hold on --out-dir for the run: the folder made and probed (make_out_dir), its lock taken (a lock a
    killed run left is taken over with a line saying so), the temporary files of killed saves removed. True when
    this call created the folder."""
    created = make_out_dir(out_dir)
    try:
        take_lock(out_dir)
    except UsageError:
        remove_if_empty(out_dir, created)
        raise
    remove_leftovers(out_dir)
    return created


def take_lock(out_dir):
    """OUT/run.lock, created atomically (of two runs, one creates it: open's mode x is O_CREAT | O_EXCL)."""
    path = os.path.join(out_dir, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "process_start": process_start(os.getpid()), "command": " ".join([os.path.basename(sys.argv[0])] +
                                                                          sys.argv[1:])}
    for _ in range(3):
        try:
            with open(path, "x") as f:
                json.dump(me, f)
            HELD_LOCKS[path] = me
            return
        except FileExistsError:
            holder = read_lock(path)
        except OSError as e:  # created, but not written (a full disk): not left behind
            with contextlib.suppress(OSError):
                os.remove(path)
            raise UsageError(f"--out-dir {out_dir} cannot be written ({os_reason(e)}); pass a folder you can write "
                             f"to") from None
        if holder is not None and refuse_if_in_use(out_dir, holder) == "ended" and take_over(path, holder):
            print(f"note: {path} was left by a run that ended without releasing it ({describe_holder(holder)}); "
                  f"taken over", flush=True)
    raise UsageError(f"{out_dir} is being claimed by other runs starting at this moment; pass another --out-dir")


def check_not_in_use(out_dir):
    """Before anything is read or written: one sentence when a live run holds --out-dir's lock."""
    holder = read_lock(os.path.join(out_dir, LOCK))
    if holder is not None:
        refuse_if_in_use(out_dir, holder)


def refuse_if_in_use(out_dir, holder):
    """One sentence for a lock held by a live run (of this machine, or of another, which cannot be checked from
    here); else 'ended' (a killed run's)."""
    path, state = os.path.join(out_dir, LOCK), holder_state(holder, os.path.join(out_dir, LOCK))
    if state == "live":
        raise UsageError(f"{out_dir} is in use by another run ({describe_holder(holder)}); wait for it to end, "
                         f"or pass another --out-dir")
    if state == "elsewhere":
        raise UsageError(f"{out_dir} is in use by a run on {holder.get('host')} ({describe_holder(holder)}), which "
                         f"cannot be checked from here; if that run has ended, delete {path} and start again, else "
                         f"pass another --out-dir")
    return state


def holder_state(holder, path):
    """'live', 'ended' (its process is gone, or its pid names another process now) or 'elsewhere' (another host)."""
    if not holder:  # unreadable: being written by a run starting now (a fresh file), or left half-written
        try:
            return "live" if time.time() - os.path.getmtime(path) < 5 else "ended"
        except OSError:
            return "ended"  # gone meanwhile: take_over finds nothing to take, and the lock is tried again
    if holder.get("host") != socket.gethostname():
        return "elsewhere"
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():  # this process holds no lock it did not release
        return "ended"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "ended"
    except PermissionError:
        pass  # another user's process
    stat = proc_stat(pid)
    if stat is not None and (stat[0] == "Z" or stat[1] != holder.get("process_start", stat[1])):
        return "ended"  # a zombie, or the pid reused
    return "live"


def proc_stat(pid):
    """(state, start time in clock ticks since boot) of a process, from /proc (None without it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_start(pid):
    stat = proc_stat(pid)
    return stat[1] if stat else None


def read_lock(path):
    """The lock's holder: a dict, {} when unreadable (being written, or damaged), None when there is no lock."""
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def describe_holder(holder):
    said = [f"pid {holder['pid']}"] if "pid" in holder else []
    said += [f"started {holder['started']}"] if "started" in holder else []
    said += [f"`{holder['command']}`"] if holder.get("command") else []
    return ", ".join(said) or "its lock file is unreadable"


def take_over(path, holder):
    """Move an ended run's lock aside (an atomic rename: of two runs taking it over, one does), True when it was
    that lock; a live run's lock, made meanwhile, is put back."""
    aside = f"{path}.stale{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    taken = read_lock(aside)
    if taken != holder:
        with contextlib.suppress(OSError):
            os.link(aside, path)
    with contextlib.suppress(OSError):
        os.remove(aside)
    return taken == holder


def release_out_dir(out_dir):
    """Remove the lock this process holds on out_dir, if it still is the one it wrote (every exit: main, stop)."""
    path = os.path.join(out_dir, LOCK)
    me = HELD_LOCKS.pop(path, None)
    if me is not None and read_lock(path) == me:
        with contextlib.suppress(OSError):
            os.remove(path)


LEFTOVER = re.compile(r"\.tmp\d+$|^\.write-test\d+$|\.stale\d+$")  # atomic_save's, make_out_dir's, take_over's


def remove_leftovers(out_dir):
    """The temporary files of writes that were killed (last.pt.tmp<pid>, ...), in out_dir and its folders (FFCL's
    pretrain/): with the lock held, no run is writing them."""
    removed = []
    folders = [e.path for e in os.scandir(out_dir) if e.is_dir() and not os.path.exists(os.path.join(e.path, LOCK))]
    for folder in [out_dir] + folders:  # not a folder another run holds (an --out-dir inside this one)
        for entry in os.scandir(folder):
            if entry.is_file() and LEFTOVER.search(entry.name):
                with contextlib.suppress(OSError):
                    os.remove(entry.path)
                    removed.append(os.path.relpath(entry.path, out_dir))
    if removed:
        print(f"removed what killed writes left in {out_dir}: {', '.join(sorted(removed))}", flush=True)


# A resumed run may change these flags (the run's value where not given): more or fewer --epochs (the schedule
# change said), --data-dir (the same images elsewhere: data_identity checks them), its printing and logging ...
RESUME_MAY_CHANGE = ("epochs", "data_dir", "quiet", "tensorboard")
# ... and this machine's: never taken from the run
THIS_MACHINE = ("device", "amp", "compile", "workers")
# --recipe and --baseline are compared through what they set: the flags' values, the method
NOT_COMPARED = RESUME_MAY_CHANGE + THIS_MACHINE + ("out_dir", "resume", "recipe", "baseline")


def resume_flags(args, name, given=None):
    """--resume: the run's own value of every flag the command does not give (given: their names; None: all are
    given), but THIS_MACHINE's; one sentence naming each flag it gives otherwise. The checkpoint's checksums are
    verified here, before any data is loaded or anything written."""
    path = os.path.join(args.out_dir, "last.pt")
    if not os.path.isfile(path):
        raise UsageError(f"--resume: {path} does not exist")
    verify_checksums(path)
    ckpt = peek_checkpoint(path) or load_checkpoint(path)  # torch's old format cannot be mapped
    saved = ckpt.get("args", {}) if isinstance(ckpt, dict) else {}
    if given is not None:
        for key in (saved.keys() & vars(args).keys()) - set(given) - set(THIS_MACHINE + ("out_dir", "resume")):
            setattr(args, key, saved[key])
        if "tensorboard" not in given and args.tensorboard is not None:
            args.tensorboard = tensorboard_dir(args.tensorboard)  # the package may be missing here
    check_resumed_run(ckpt, path, name, args)


def check_resumed_run(ckpt, path, name, args):
    """The run in `path` is this script's method with these flags (but NOT_COMPARED's), or one sentence."""
    saved = ckpt.get("args", {}) if isinstance(ckpt, dict) else {}
    method = ckpt.get("method") if isinstance(ckpt, dict) else None
    if method != name:
        hint = " (a --baseline run: add --baseline)" if method == "vanilla" and saved.get("baseline") else ""
        raise UsageError(f"{path} was written by '{method}', not '{name}'{hint}")
    differ = differing_flags(saved, vars(args), NOT_COMPARED)
    if differ:
        raise UsageError(f"--resume: {os.path.dirname(path)} holds a run trained with {shown_flags(saved, differ)} "
                         f"but this command gives {shown_flags(vars(args), differ)}; a resumed run keeps its flags "
                         f"(leave them out to take the run's) but for --epochs, --data-dir (the same images), "
                         f"--quiet, --tensorboard, --device, --amp, --compile and --workers; pass another --out-dir "
                         f"to start a new run")


def differing_flags(saved, values, ignored):
    """The flags both hold that differ, but `ignored` ones; equivalent spellings are equal (--arch resnet20 and
    resnet20,resnet20 for 2 students; --milestones 0.5 and 100 for 200 epochs)."""
    def same(key):
        a, b = saved[key], values[key]
        try:
            if key == "arch":
                return student_archs(argparse.Namespace(arch=a, students=saved.get("students", 1))) == \
                    student_archs(argparse.Namespace(arch=b, students=values.get("students", 1)))
            if key == "milestones":
                epochs = saved.get("epochs", values.get("epochs"))
                return milestone_epochs(argparse.Namespace(milestones=a, epochs=epochs)) == \
                    milestone_epochs(argparse.Namespace(milestones=b, epochs=epochs))
        except (AttributeError, TypeError, ValueError):
            pass
        return a == b
    return [k for k in values if k in saved and k not in ignored and not same(k)]


def shown_flags(values, keys):
    def shown(v):
        return "on" if v is True else "off" if v is False else "not given" if v is None else v
    return ", ".join(f"--{k.replace('_', '-')} {shown(values[k])}" for k in keys)


def check_same_data(out_dir, data):
    """--resume: the data must be the run's (data_identity: classes, image counts, fingerprint), or one sentence."""
    path = os.path.join(out_dir, "last.pt")
    saved = (peek_checkpoint(path) or {}).get("args", {})
    before, now = saved.get("data"), getattr(data, "identity", None)
    if before is None or now is None:
        if now is not None:
            print(f"note: {path} predates the record of its data: the data cannot be checked against it", flush=True)
        return
    if before != now:
        raise UsageError(f"--resume: the data is not what {path} was trained on ({describe_data(now)}; the run's: "
                         f"{describe_data(before)}); pass the run's --data-dir ({saved.get('data_dir')}) with its "
                         f"images as they were, or another --out-dir to train on these")


def describe_data(identity):
    return (f"{identity.get('classes')} classes, {identity.get('train_images')} train / "
            f"{identity.get('test_images')} test images, fingerprint {str(identity.get('fingerprint'))[:12]}")


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (kill, a cluster's time limit, a preemption), raised where the run is."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


INTERRUPT = {"signal": None, "deferred": 0, "pending": None}  # the signal received; open writes; one held back


def catch_interrupts():
    """From here SIGINT and SIGTERM raise Interrupted (stop() says it in one sentence, exit status 130 / 143);
    a signal the caller has set to be ignored (SIGINT in a non-interactive shell's background job) stays ignored."""
    INTERRUPT.update(signal=None, deferred=0, pending=None)
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: the caller's handlers stay
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, on_interrupt)


def on_interrupt(signum, frame):
    INTERRUPT["signal"] = signum
    if INTERRUPT["deferred"] and INTERRUPT["pending"] is None:  # a second one is not held back
        INTERRUPT["pending"] = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def finishing_writes():
    """A file's write (atomic_save, write_json) completes before an interrupt that came during it takes effect."""
    INTERRUPT["deferred"] += 1
    try:
        yield
    finally:
        INTERRUPT["deferred"] -= 1
    if not INTERRUPT["deferred"] and INTERRUPT["pending"] is not None:
        signum, INTERRUPT["pending"] = INTERRUPT["pending"], None
        raise Interrupted(signum)


# ==================================================================================================
# Backbones
# ==================================================================================================
# Every backbone is a `Backbone`: `stages` run one after another (stage 0 holds the stem), `classifier`
# maps the last stage's output to logits. forward(x) -> (logits, [stage outputs]). A method that needs to
# change a stage's output before the next stage consumes it (MKB-CL) runs `stages` itself.

class Backbone(nn.Module):
    def __init__(self, stages, classifier, arch, num_classes):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.classifier = classifier
        self.arch, self.num_classes = arch, num_classes

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.classifier(x), features


def pool_fc(channels, num_classes):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class BasicBlock(nn.Module):
    """CIFAR ResNet block (post-activation), 1x1-conv + BN shortcut where the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def cifar_resnet(depth, num_classes, arch):
    n = (depth - 2) // 6
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    stages, cin = [], 16
    for i, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
        blocks = []
        for b in range(n):
            blocks.append(BasicBlock(cin, width, stride if b == 0 else 1))
            cin = width
        stages.append(nn.Sequential(stem, *blocks) if i == 0 else nn.Sequential(*blocks))
    model = Backbone(stages, pool_fc(64, num_classes), arch, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


class WideBlock(nn.Module):
    """Pre-activation wide-ResNet block (BN-ReLU-conv twice), 1x1-conv shortcut where the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


def wide_resnet(depth, k, num_classes, arch):
    n = (depth - 4) // 6
    stages, cin = [], 16
    for i, (width, stride) in enumerate([(16 * k, 1), (32 * k, 2), (64 * k, 2)]):
        blocks = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)] if i == 0 else []
        for b in range(n):
            blocks.append(WideBlock(cin, width, stride if b == 0 else 1))
            cin = width
        if i == 2:  # the final BN-ReLU belongs to the last stage, so its output is the activated feature map
            blocks += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        stages.append(nn.Sequential(*blocks))
    model = Backbone(stages, pool_fc(cin, num_classes), arch, num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


# torchvision's ImageNet definitions adapted to 32x32 input: 3x3 stride-1 stem, no max-pool.
def tv_resnet(name, num_classes, arch):
    import torchvision
    net = getattr(torchvision.models, name)(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu)
    stages = [nn.Sequential(stem, net.layer1), net.layer2, net.layer3, net.layer4]
    return Backbone(stages, nn.Sequential(net.avgpool, nn.Flatten(), net.fc), arch, num_classes)


def tv_mobilenetv2(num_classes, arch):
    import torchvision
    net = torchvision.models.mobilenet_v2(num_classes=num_classes)
    f = net.features
    f[0][0].stride = (1, 1)              # stem: stride 2 -> 1
    f[2].conv[1][0].stride = (1, 1)      # first stride-2 block -> 1 (the usual CIFAR setting): 32->16->8->4
    # stage ends where the resolution halves next: 32x32 (24 ch), 16x16 (32 ch), 8x8 (96 ch), 4x4 (1280 ch)
    stages = [f[0:4], f[4:7], f[7:14], f[14:]]
    return Backbone(stages, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier), arch, num_classes)


def tv_shufflenetv2(num_classes, arch):
    import torchvision
    net = torchvision.models.shufflenet_v2_x1_0(num_classes=num_classes)
    net.conv1[0] = nn.Conv2d(3, 24, 3, 1, 1, bias=False)
    stages = [nn.Sequential(net.conv1, net.stage2), net.stage3, nn.Sequential(net.stage4, net.conv5)]
    return Backbone(stages, pool_fc(1024, num_classes), arch, num_classes)


def tv_vgg16(num_classes, arch):
    import torchvision
    f = list(torchvision.models.vgg16_bn().features)
    pools = [i for i, m in enumerate(f) if isinstance(m, nn.MaxPool2d)]
    # stages end before each of the first four max-pools (32, 16, 8, 4 px); the last pool ends at 1 px.
    bounds = [0] + pools[:4] + [len(f)]
    stages = [nn.Sequential(*f[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return Backbone(stages, pool_fc(512, num_classes), arch, num_classes)


# torchvision's definitions at their native ImageNet shape (7x7 stride-2 stem and max-pool): chosen by
# build_model for inputs of 64 px or more; the stages end where the resolution halves next (/4 .. /32).
def imagenet_resnet(name, num_classes, arch):
    import torchvision
    net = getattr(torchvision.models, name)(num_classes=num_classes)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [nn.Sequential(stem, net.layer1), net.layer2, net.layer3, net.layer4]
    return Backbone(stages, nn.Sequential(net.avgpool, nn.Flatten(), net.fc), arch, num_classes)


def imagenet_mobilenetv2(num_classes, arch):
    import torchvision
    net = torchvision.models.mobilenet_v2(num_classes=num_classes)
    f = net.features  # 224 px: 56x56 (24 ch), 28x28 (32 ch), 14x14 (96 ch), 7x7 (1280 ch)
    stages = [f[0:4], f[4:7], f[7:14], f[14:]]
    return Backbone(stages, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier), arch, num_classes)


def imagenet_shufflenetv2(num_classes, arch):
    import torchvision
    net = torchvision.models.shufflenet_v2_x1_0(num_classes=num_classes)
    stages = [nn.Sequential(net.conv1, net.maxpool, net.stage2), net.stage3, nn.Sequential(net.stage4, net.conv5)]
    return Backbone(stages, pool_fc(1024, num_classes), arch, num_classes)


def densenet121(num_classes, arch):
    """torchvision's DenseNet-121 as it is (any input size): a stage ends after each dense block."""
    import torchvision
    net = torchvision.models.densenet121(num_classes=num_classes)
    f = list(net.features)  # conv0 norm0 relu0 pool0 block1 trans1 block2 trans2 block3 trans3 block4 norm5
    stages = [nn.Sequential(*f[0:5]), nn.Sequential(*f[5:7]), nn.Sequential(*f[7:9]),
              nn.Sequential(*f[9:], nn.ReLU(inplace=True))]
    return Backbone(stages, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier), arch, num_classes)


IMAGENET_SIZE = 64  # inputs at least this large (shorter side, px) get the ImageNet-shape definitions below

IMAGENET_ARCHS = {
    "resnet18": lambda nc: imagenet_resnet("resnet18", nc, "resnet18"),
    "resnet34": lambda nc: imagenet_resnet("resnet34", nc, "resnet34"),
    "resnet50": lambda nc: imagenet_resnet("resnet50", nc, "resnet50"),
    "mobilenetv2": lambda nc: imagenet_mobilenetv2(nc, "mobilenetv2"),
    "shufflenetv2": lambda nc: imagenet_shufflenetv2(nc, "shufflenetv2"),
}

ARCHS = {
    "resnet20": lambda nc: cifar_resnet(20, nc, "resnet20"),
    "resnet32": lambda nc: cifar_resnet(32, nc, "resnet32"),
    "resnet56": lambda nc: cifar_resnet(56, nc, "resnet56"),
    "resnet110": lambda nc: cifar_resnet(110, nc, "resnet110"),
    "wrn_16_2": lambda nc: wide_resnet(16, 2, nc, "wrn_16_2"),
    "wrn_40_2": lambda nc: wide_resnet(40, 2, nc, "wrn_40_2"),
    "wrn_28_10": lambda nc: wide_resnet(28, 10, nc, "wrn_28_10"),
    "resnet18": lambda nc: tv_resnet("resnet18", nc, "resnet18"),
    "resnet34": lambda nc: tv_resnet("resnet34", nc, "resnet34"),
    "resnet50": lambda nc: tv_resnet("resnet50", nc, "resnet50"),
    "mobilenetv2": lambda nc: tv_mobilenetv2(nc, "mobilenetv2"),
    "shufflenetv2": lambda nc: tv_shufflenetv2(nc, "shufflenetv2"),
    "vgg16": lambda nc: tv_vgg16(nc, "vgg16"),  # torchvision's layers unchanged: the same at every size
    "densenet121": lambda nc: densenet121(nc, "densenet121"),
}


def build_model(arch: str, num_classes: int, image_size=32) -> Backbone:
    """A backbone by zoo name for inputs of image_size px (an int or (H, W)); forward(x) -> (logits, [stage
    outputs]). From IMAGENET_SIZE px up, the names of IMAGENET_ARCHS mean torchvision's native definition."""
    if arch not in ARCHS:
        raise UsageError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    size = min(image_size) if isinstance(image_size, (tuple, list)) else image_size
    model = (IMAGENET_ARCHS if size >= IMAGENET_SIZE and arch in IMAGENET_ARCHS else ARCHS)[arch](num_classes)
    model.image_size = int(size)  # recorded in the exported payload, so load_backbone rebuilds the same shape
    return model


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_payload(model: nn.Module) -> dict:
    """A deployable student as plain data (the same as FFSD's export() writes): a zoo backbone's (one with .arch)
    loads with `load_backbone` (no method code needed); any other student's weights with its own load_state_dict."""
    payload = {"kind": "student", "module": type(model).__name__,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if hasattr(model, "arch"):
        payload.update(kind="backbone", arch=model.arch, num_classes=model.num_classes,
                       image_size=getattr(model, "image_size", 32))
    return payload


def load_backbone(path: str, arch: str = None, num_classes: int = None) -> Backbone:
    """Load a file written from `backbone_payload`; optionally insist on its architecture and class count. The
    network's `preprocess` (how its run prepared an image; preprocess_image(image, net.preprocess) does it) and
    `classes` (the class names) come with it, None where the file does not carry them."""
    payload = load_checkpoint(path)
    if payload.get("kind") == "student":
        raise UsageError(f"{path} holds the weights of a {payload.get('module')}, not of a zoo backbone; load them "
                         f"into that model with model.load_state_dict(torch.load(path, weights_only=True)"
                         f"['state_dict'])")
    if payload.get("kind") != "backbone":
        raise UsageError(f"{path} is not a saved backbone (it has no 'kind: backbone' entry)")
    if arch is not None and payload["arch"] != arch:
        raise UsageError(f"{path} holds a {payload['arch']}, but {arch} was asked for")
    if num_classes is not None and payload["num_classes"] != num_classes:
        raise UsageError(f"{path} was trained for {payload['num_classes']} classes, but the data has {num_classes}")
    model = build_model(payload["arch"], payload["num_classes"], payload.get("image_size", 32))
    model.load_state_dict(payload["state_dict"])
    model.preprocess, model.classes = payload.get("preprocess"), payload.get("classes")
    return model


def build_students(args, data) -> list:
    """One backbone per student from --arch (one name, or a comma list as long as --students), for the data's
    classes and image size (what a method's build() reads of `data`: num_classes, image_size)."""
    return [build_model(arch, data.num_classes, tuple(data.image_size)) for arch in student_archs(args)]


def student_archs(args) -> list:
    """--arch as one name per student: a single name is every student's."""
    archs = [a.strip() for a in args.arch.split(",")]
    return archs * args.students if len(archs) == 1 else archs


class Student(nn.Module):
    """A classifier made a student: forward(x) -> (logits, [the outputs of the graph nodes `stage_nodes`]),
    picked out of its traced graph by torchvision's feature extraction (the parameters stay the model's)."""

    def __init__(self, model, stage_nodes):
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
        logits_node = get_graph_node_names(model)[1][-1]  # the eval graph's last node
        self.stage_nodes = list(stage_nodes)
        self.body = create_feature_extractor(model, {**{n: n for n in self.stage_nodes}, logits_node: "logits"})

    def forward(self, x):
        out = self.body(x)
        return out["logits"], [out[n] for n in self.stage_nodes]


@torch.no_grad()
def stage_nodes_of(model, image_size=(32, 32)):
    """The stage outputs of a classifier: of its direct children (of `model.features` where it has that),
    the last one at each spatial size, global pools left out: layer1..layer4 and the stem for a ResNet."""
    parent, prefix = (model.features, "features.") if isinstance(getattr(model, "features", None), nn.Sequential) \
        else (model, "")
    last = {}  # spatial size -> the last child that produced a 4-D output of that size (in forward order)
    hooks = [m.register_forward_hook(lambda m, i, out, name=name: last.__setitem__(tuple(out.shape[-2:]), name)
                                     if torch.is_tensor(out) and out.dim() == 4 else None)
             for name, m in parent.named_children() if not isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))]
    mode, p = model.training, next(model.parameters())
    try:
        model.eval()(torch.zeros(1, 3, *image_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(mode)
        for h in hooks:
            h.remove()
    return [prefix + name for name in last.values()]


def as_student(model: nn.Module, stage_nodes=None, image_size=(32, 32)) -> Student:
    """Any torchvision classifier (or other FX-traceable one) as a student for every method here:
    `stage_nodes` are graph node names as torchvision.models.feature_extraction.get_graph_node_names lists
    them (default: `stage_nodes_of(model, image_size)`)."""
    if stage_nodes is None:
        stage_nodes = stage_nodes_of(model, image_size)
    if not stage_nodes:
        raise UsageError(f"no stage outputs found in {type(model).__name__}; pass stage_nodes=[...] by name")
    return Student(model, stage_nodes)


# ==================================================================================================
# Data: the in-memory path (CIFAR first; every data set but ImageNet and --stream)
# ==================================================================================================
# Two data paths with one interface, which the loop uses: train_batches(gen, batch, steps, num_views) yields
# ([num_views normalised views], y) on the device for one epoch, test_batches() and holdout_batches() yield
# (normalised x, y); train_y / test_y hold the labels, image_size the (H, W) the networks see.
# - Data (CIFAR, MNIST, STL-10, small folder data sets): the whole dataset lives on the training device as
#   uint8 (N, 3, H, W). Augmentation (random crop from the image padded by H/8 pixels of zeros or, --pad-mode
#   reflect, of its mirror image, and a horizontal flip, drawn per sample; --augment none / crop drops them) and
#   normalisation are batched tensor ops there: no DataLoader, no per-image Python in the training loop.
# - StreamedData (ImageNet, --stream): images stay JPEG files on disk; DataLoader workers decode and augment
#   them (RandomResizedCrop + flip; test: resize to 8/7 of the size + center crop), uint8 into pinned memory;
#   the device normalises. Each epoch's order and every image's augmentation come from `gen`, so a resumed
#   run continues exactly, whatever the number of workers.

class Data:
    def __init__(self, train_x, train_y, test_x, test_y, num_classes, device, mean=None, std=None, flip=True):
        self.train_x, self.train_y = train_x.to(device), train_y.to(device)
        self.test_x, self.test_y = test_x.to(device), test_y.to(device)
        self.num_classes, self.device, self.flip = num_classes, device, flip
        self.image_size = tuple(self.train_x.shape[-2:])
        self.pad = max(1, self.image_size[0] // 8)  # 4 px at 32 px (the CIFAR recipe), 12 at STL-10's 96
        self.crop, self.pad_mode = True, "zeros"  # --augment, --pad-mode (load_data sets them)
        if mean is None:  # statistics of the training images themselves, in chunks (no float copy of it all)
            total = torch.zeros(2, 3, dtype=torch.float64, device=device)
            low, high = torch.full((3,), 255, device=device), torch.zeros(3, device=device)
            for chunk in self.train_x.split(10000):
                x = chunk.double().transpose(0, 1).flatten(1)
                total += torch.stack([x.sum(1), x.pow(2).sum(1)])
                low, high = torch.minimum(low, x.amin(1)), torch.maximum(high, x.amax(1))
            n = self.train_x.numel() / 3
            mean = total[0] / n
            std = (total[1] / n - mean ** 2).clamp_min(0).sqrt() * math.sqrt(n / (n - 1))
            mean, std = mean / 255, std / 255
            constant = (low == high).tolist()
            if any(constant):  # its standard deviation is 0: dividing by it would make every input non-finite
                std = torch.where(torch.tensor(constant, device=device), torch.ones_like(std), std)
                print(f"note: the {' and '.join(c for c, k in zip(('red', 'green', 'blue'), constant) if k)} channel "
                      f"of the training images has one value in every pixel (standard deviation 0): it is "
                      f"normalised with a standard deviation of 1 instead, and carries no information", flush=True)
        self.stats = [torch.as_tensor(v, dtype=torch.float32).tolist() for v in (mean, std)]  # what exports carry
        self.mean, self.std = normalisation(*self.stats, device)
        self.holdout_x = self.holdout_y = None
        self.classes, self.border = None, 0  # class names where known, MNIST's padding (load_data sets them)

    def normalize(self, x):
        return (x.float() - self.mean) / self.std

    def preprocessing(self):
        """How an image becomes the networks' input, as plain data (every export carries it: preprocess_image)."""
        return {"mean": self.stats[0], "std": self.stats[1], "image_size": list(self.image_size),
                "resize": "bilinear", "pad": self.border}

    def hold_out(self, per_class: int):
        """Move a class-balanced set of `per_class` images per class out of the training set (fixed choice)."""
        if per_class < 1 or per_class * self.num_classes >= len(self.train_y):
            raise UsageError(f"cannot hold out {per_class} images per class from {len(self.train_y)} training images")
        idx = balanced_indices(self.train_y.cpu(), per_class, self.num_classes)
        keep = torch.ones(len(self.train_y), dtype=torch.bool)
        keep[idx] = False
        keep, idx = keep.to(self.device), idx.to(self.device)
        self.holdout_x, self.holdout_y = self.train_x[idx], self.train_y[idx]
        self.train_x, self.train_y = self.train_x[keep], self.train_y[keep]
        return self.holdout_x, self.holdout_y

    def train_batches(self, gen, batch, steps, num_views=1, rank=0, world=1):
        """One epoch: `steps` batches of `batch` images from a fresh permutation, each image augmented
        num_views times; process `rank` of `world` gets images rank, rank + world, ... of every batch."""
        perm = torch.randperm(len(self.train_y), device=self.device, generator=gen)
        for step in range(steps):
            idx = perm[step * batch:(step + 1) * batch][rank::world]
            x = self.train_x[idx]
            yield ([self.normalize(augment(x, gen, self.pad, self.flip, rank, world, self.crop, self.pad_mode))
                    for _ in range(num_views)], self.train_y[idx])

    def test_batches(self, batch_size=None):
        yield from self._batches(self.test_x, self.test_y, batch_size or 1000)

    def holdout_batches(self, batch_size=None):
        yield from self._batches(self.holdout_x, self.holdout_y, batch_size or 1000)

    def _batches(self, x, y, batch_size):
        for i in range(0, len(y), batch_size):
            yield self.normalize(x[i:i + batch_size]), y[i:i + batch_size]


def normalisation(mean, std, device="cpu"):
    """The (1, 3, 1, 1) tensors that normalise uint8 images, from per-channel mean and std in [0, 1] units: the
    same values for a run, an export evaluated later (scripts/evaluate.py) and preprocess_image."""
    return tuple(255 * torch.as_tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (mean, std))


def preprocess_image(image, preprocess):
    """A PIL image as a network's input batch (1, 3, H, W), prepared as its run prepared the test images:
    `preprocess` is an export's (load_backbone(path).preprocess): RGB, the padding of MNIST, resized to the
    image size with PIL's bilinear filter (in-memory data) or its shorter side to 8/7 of it, then the center
    crop (streamed data), normalised with the run's mean and std."""
    import torchvision.transforms as T
    from PIL import Image, ImageOps
    img = image.convert("RGB")
    if preprocess.get("pad"):
        img = ImageOps.expand(img, preprocess["pad"], fill=0)
    h, w = preprocess["image_size"]
    if preprocess.get("resize") == "center_crop":
        img = T.CenterCrop(h)(T.Resize(round(h * 8 / 7))(img))
    elif img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]
    mean, std = normalisation(preprocess["mean"], preprocess["std"])
    return (x.float() - mean) / std


def augment(x, generator, pad=4, flip=True, rank=0, world=1, crop=True, pad_mode="zeros"):
    """Per-sample random crop of the padded batch and random horizontal flip; uint8 in, uint8 out. The padding is
    zeros, or with pad_mode="reflect" the image mirrored at its border (torchvision's Pad(padding_mode='reflect'),
    the border pixel not repeated). crop=False, flip=False: the images as they are, no draws (--augment).
    x is share `rank` of `world` (images rank, rank + world, ...) of a batch: the draws are made for the
    whole batch and this share's are kept, so every process's generator stays the same."""
    b, c, h, w = x.shape
    crops = x
    if crop:
        dy = torch.randint(0, 2 * pad + 1, (b * world, 1, 1, 1), device=x.device, generator=generator)[rank::world]
        dx = torch.randint(0, 2 * pad + 1, (b * world, 1, 1, 1), device=x.device, generator=generator)[rank::world]
        rows = dy + torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = dx + torch.arange(w, device=x.device).view(1, 1, 1, w)
        if pad_mode == "reflect":  # index the image itself: -k -> k, n - 1 + k -> n - 1 - k
            source, rows, cols = x, reflect_index(rows - pad, h), reflect_index(cols - pad, w)
        else:
            source = F.pad(x, (pad, pad, pad, pad))
        batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
        chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
        crops = source[batch, chan, rows, cols]
    if not flip:  # digits (MNIST) are not mirror-symmetric
        return crops
    flips = torch.rand(b * world, 1, 1, 1, device=x.device, generator=generator)[rank::world] < 0.5
    return torch.where(flips, crops.flip(3), crops)


def reflect_index(i, n):
    """Indices i in [-n + 1, 2n - 2] mirrored into [0, n - 1] about the first and last pixel."""
    return (n - 1) - ((n - 1) - i.abs()).abs()


def balanced_indices(y, per_class: int, num_classes: int, seed: int = 0):
    """`per_class` indices of every class, drawn with a fixed seed (the same subset for every run)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    picked = []
    for c in range(num_classes):
        members = order[y[order] == c]
        if len(members) < per_class:
            raise UsageError(f"class {c} has only {len(members)} images, fewer than the {per_class} asked for")
        picked.append(members[:per_class])
    return torch.cat(picked).sort().values


def subset(labels, n, flag):
    """The indices of a class-balanced subset of n of these labels (the same for every run); all for n = 0."""
    y = torch.as_tensor(labels).cpu()
    num_classes = int(y.max()) + 1
    if not n:
        return slice(None)
    if n < num_classes:
        raise UsageError(f"{flag} {n} is below the number of classes ({num_classes}); "
                         f"a balanced subset needs one per class")
    return balanced_indices(y, n // num_classes, num_classes).tolist()


CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def torchvision_set(cls, data_dir, name, hint, **kw):
    """A torchvision data set from data_dir, downloaded when missing (20 s socket timeout); offline, one
    sentence saying what to put there."""
    import socket
    try:
        return cls(data_dir, download=False, **kw)
    except RuntimeError:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            return cls(data_dir, download=True, **kw)
        except Exception as e:
            raise UsageError(f"{name} is not in {data_dir} and could not be downloaded ({type(e).__name__}); "
                             f"{hint}") from None
        finally:
            socket.setdefaulttimeout(old)


def load_cifar(name, data_dir):
    """CIFAR-10/100 from torchvision's files: train and test images and labels, the number of classes and their
    names."""
    import torchvision
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    hint = (f"put the python version of {name} there, or pass --dataset folder --data-dir DIR with an "
            f"ImageFolder copy (DIR/train/<class>/*, DIR/test/<class>/*)")
    sets = []
    for train in (True, False):
        ds = torchvision_set(cls, data_dir, name, hint, train=train)
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        sets += [x, torch.as_tensor(ds.targets, dtype=torch.int64)]
    return (*sets, len(ds.classes), list(ds.classes))


def synthetic(n_train=5000, n_test=1000, num_classes=10, size=32, seed=0):
    """Learnable images from a seed: each class is a smooth random pattern, each image that pattern scaled
    and drowned in pixel noise. The same images for every run (`--seed` changes the training only)."""
    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.randn(num_classes, 3, 4, 4, generator=g), size=size, mode="bicubic")

    def draw(n):
        y = torch.arange(n) % num_classes
        x = protos[y] * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g))
        x = x + 0.6 * torch.randn(n, 3, size, size, generator=g)
        return (128 + 50 * x).clamp(0, 255).to(torch.uint8), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    return xtr, ytr, xte, yte, num_classes


IN_MEMORY = ("cifar10", "cifar100", "cinic10", "folder", "mnist", "stl10", "synthetic")

DATASETS = IN_MEMORY + ("imagenet",)


def load_data(args, device):
    """The data set of --dataset: a StreamedData for imagenet (and a folder data set with --stream), a Data
    (everything on the device) for the others."""
    mean = std = None
    if args.dataset != "synthetic" and os.path.exists(args.data_dir) and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir} is a file, not a folder; pass the folder that holds the "
                         f"data set")
    if args.dataset in ("folder", "cinic10", "imagenet") and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir} does not exist")
    if args.dataset == "imagenet" or getattr(args, "stream", False):
        names = ("val",) if args.dataset == "imagenet" else ("test", "val")
        test_name = next((n for n in names if os.path.isdir(os.path.join(args.data_dir, n))), None)
        if not os.path.isdir(os.path.join(args.data_dir, "train")) or test_name is None:
            raise UsageError(f"--data-dir {args.data_dir} must hold train/<class>/* and "
                             f"{'/'.join(names)}/<class>/* (ImageNet's validation images sorted into class folders)")
        stats = CINIC_STATS if args.dataset == "cinic10" else IMAGENET_STATS
        data = StreamedData(os.path.join(args.data_dir, "train"), os.path.join(args.data_dir, test_name), device,
                            args.image_size or 224, args.workers, *stats, args.limit_train, args.limit_test,
                            getattr(args, "augment", "crop+flip"))
        data.identity = data_identity(data, args.data_dir)
        return data
    if getattr(args, "image_size", None):
        raise UsageError("--image-size is for streamed data (--dataset imagenet, or --stream); "
                         f"{args.dataset} is used at its own size")
    flip, classes, border = True, None, 0
    if args.dataset == "synthetic":
        train_x, train_y, test_x, test_y, nc = synthetic()
    elif args.dataset in ("folder", "cinic10"):
        train_x, train_y, test_x, test_y, nc, classes = load_folder(args.data_dir, args.workers)
        if args.dataset == "cinic10":
            mean, std = CINIC_STATS
    elif args.dataset == "mnist":
        (train_x, train_y, test_x, test_y, nc), flip = load_mnist(args.data_dir), False
        classes, border = [str(digit) for digit in range(10)], 2
    elif args.dataset == "stl10":
        train_x, train_y, test_x, test_y, nc = load_stl10(args.data_dir)
    else:
        train_x, train_y, test_x, test_y, nc, classes = load_cifar(args.dataset, args.data_dir)
        mean, std = CIFAR_STATS[args.dataset]
    train = subset(train_y, args.limit_train, "--limit-train")
    test = subset(test_y, args.limit_test, "--limit-test")
    train_x, train_y, test_x, test_y = train_x[train], train_y[train], test_x[test], test_y[test]
    data = Data(train_x, train_y, test_x, test_y, nc, device, mean, std, flip)
    data.classes, data.border = classes, border
    augment_with = getattr(args, "augment", "crop+flip")
    data.crop, data.flip = augment_with != "none", flip and augment_with == "crop+flip"
    data.pad_mode = getattr(args, "pad_mode", "zeros")
    data.identity = data_identity(data)
    return data


def data_identity(data, root=None):
    """What a resumed run checks its data against (check_same_data): the class count, the image counts and a
    fingerprint: in memory, a hash of the decoded images' bytes and their labels (a changed, inverted, mirrored or
    reordered image changes it; ~0.3 s for CIFAR on a CPU core); streamed, of the files' names and labels (their
    pixels are not read at start)."""
    digest = hashlib.sha256()
    if isinstance(data, StreamedData):
        skip = len(os.path.join(root, ""))  # paths are root/<split>/<class>/<image>
        digest.update("".join(f"{path[skip:]}\t{label}\n" for path, label in
                              data.train_set.files + data.test_set.files).encode())
    else:
        for t in (data.train_x, data.train_y, data.test_x, data.test_y):
            t = t.cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.numpy().data)
    return {"classes": data.num_classes, "train_images": len(data.train_y), "test_images": len(data.test_y),
            "fingerprint": digest.hexdigest()[:16]}


# ==================================================================================================
# Data: the streamed path (ImageNet, --stream), folders, MNIST, STL-10, CINIC-10
# ==================================================================================================

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def list_image_folder(root):
    """ImageFolder layout root/<class>/<image>: the sorted class names and the (path, class index) list. No class
    folder, a class folder without images, or a folder that cannot be listed: one sentence."""
    def entries(folder):
        try:
            return list(os.scandir(folder))
        except OSError as e:
            raise UsageError(f"cannot list the folder {folder} ({os_reason(e)})") from None

    if not os.path.isdir(root):
        raise UsageError(f"{root} does not exist (expected {root}/<class>/<image>)")
    classes = sorted(d.name for d in entries(root) if d.is_dir())
    if not classes:
        raise UsageError(f"{root} holds no class folders (expected {root}/<class>/<image>)")
    files, empty = [], []
    for i, c in enumerate(classes):
        found = sorted(e.name for e in entries(os.path.join(root, c))
                       if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.is_dir())
        empty += [] if found else [c]
        files += [(os.path.join(root, c, f), i) for f in found]
    if not files:
        raise UsageError(f"{root} holds no images in its class folders (expected {root}/<class>/<image> with "
                         f"names ending {', '.join(IMAGE_EXTENSIONS)})")
    if empty:
        raise UsageError(f"the class folder{'s' * (len(empty) > 1)} {', '.join(empty)} in {root} hold"
                         f"{'s' * (len(empty) == 1)} no images; add images or remove the empty folder"
                         f"{'s' * (len(empty) > 1)}")
    return classes, files


def list_train_test(train_dir, test_dir):
    """Both ImageFolder splits, checked to have the same class folders: (classes, train files, test files)."""
    classes, train_files = list_image_folder(train_dir)
    test_classes, test_files = list_image_folder(test_dir)
    if test_classes != classes:
        only = [f"only {d} has {', '.join(sorted(set(a) - set(b)))}" for d, a, b in
                ((train_dir, classes, test_classes), (test_dir, test_classes, classes)) if set(a) - set(b)]
        raise UsageError(f"{train_dir} and {test_dir} must have the same class folders, but "
                         f"{' and '.join(only)}")
    return classes, train_files, test_files


def open_rgb(path):
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:
        raise UsageError(f"cannot read image {path} ({type(e).__name__})") from None


class ImageFiles(torch.utils.data.Dataset):
    """Item i of a (path, label) list: (view_1, ..., view_n, label), uint8 (3, H, W) views. With `seed` set,
    view v of item i is drawn with torch's RNG seeded from (seed, i, v): the same in any worker, any order."""

    def __init__(self, files, transform):
        self.files, self.transform = files, transform
        self.seed, self.num_views = None, 1

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import torchvision.transforms.functional as TF
        path, label = self.files[i]
        img = open_rgb(path)
        if self.seed is None:
            return TF.pil_to_tensor(self.transform(img)), label
        views = []
        with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG (workers 0: the main process) alone
            for v in range(self.num_views):
                torch.manual_seed((self.seed + i * self.num_views + v) % 2 ** 63)
                views.append(TF.pil_to_tensor(self.transform(img)))
        return (*views, label)


class StreamedData:
    """An ImageFolder pair streamed from disk (see the banner above); the same interface as Data."""

    def __init__(self, train_dir, test_dir, device, image_size=224, workers=4, mean=IMAGENET_STATS[0],
                 std=IMAGENET_STATS[1], limit_train=0, limit_test=0, augment="crop+flip"):
        import torchvision.transforms as T
        classes, train_files, test_files = list_train_test(train_dir, test_dir)
        self.num_classes, self.device, self.workers = len(classes), device, workers
        if limit_train:
            train_files = [train_files[i] for i in subset([c for _, c in train_files], limit_train, "--limit-train")]
        if limit_test:
            test_files = [test_files[i] for i in subset([c for _, c in test_files], limit_test, "--limit-test")]
        self.image_size = (image_size, image_size)
        eval_transform = T.Compose([T.Resize(round(image_size * 8 / 7)), T.CenterCrop(image_size)])  # 256 -> 224
        train_transform = {"none": eval_transform, "crop": T.RandomResizedCrop(image_size),  # --augment
                           "crop+flip": T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()])}
        self.train_set = ImageFiles(train_files, train_transform[augment])
        self.test_set = ImageFiles(test_files, eval_transform)
        self.holdout_set = None
        self.train_y = torch.tensor([c for _, c in train_files])
        self.test_y = torch.tensor([c for _, c in test_files])
        self.classes, self.stats = classes, [torch.as_tensor(v, dtype=torch.float32).tolist() for v in (mean, std)]
        self.mean, self.std = normalisation(*self.stats, device)

    def normalize(self, x):
        return (x.float() - self.mean) / self.std

    def preprocessing(self):
        """How an image becomes the networks' input (the test images' way), as plain data (see Data's)."""
        return {"mean": self.stats[0], "std": self.stats[1], "image_size": list(self.image_size),
                "resize": "center_crop", "pad": 0}

    def hold_out(self, per_class: int):
        """Move a class-balanced set of `per_class` images per class out of the training set (fixed choice);
        they are read like the test images."""
        if per_class < 1 or per_class * self.num_classes >= len(self.train_y):
            raise UsageError(f"cannot hold out {per_class} images per class from {len(self.train_y)} training images")
        idx = set(balanced_indices(self.train_y, per_class, self.num_classes).tolist())
        files = self.train_set.files
        self.holdout_set = ImageFiles([f for i, f in enumerate(files) if i in idx], self.test_set.transform)
        self.train_set.files = [f for i, f in enumerate(files) if i not in idx]
        self.train_y = torch.tensor([c for _, c in self.train_set.files])

    def loader(self, dataset, batch_sampler):
        from torch.utils.data import DataLoader
        loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))  # not the global RNG: ImageFiles seeds
        try:
            for *views, y in loader:
                yield [v.to(self.device, non_blocking=True) for v in views], y.to(self.device, non_blocking=True)
        except UsageError as e:  # raised in a worker: DataLoader re-raises it with the worker's traceback
            raise UsageError(str(e).strip().splitlines()[-1].split("UsageError: ", 1)[-1]) from None

    def train_batches(self, gen, batch, steps, num_views=1, rank=0, world=1):
        """One epoch: `steps` batches of a permutation drawn from gen, each image augmented num_views times
        with seeds drawn from gen (per image, so the same on any process); process `rank` of `world` gets
        images rank, rank + world, ... of every batch."""
        perm = torch.randperm(len(self.train_y), device=gen.device, generator=gen)[:steps * batch].cpu()
        self.train_set.seed = int(torch.randint(2 ** 62, (), device=gen.device, generator=gen))
        self.train_set.num_views = num_views
        for views, y in self.loader(self.train_set, perm.view(steps, batch)[:, rank::world].tolist()):
            yield [self.normalize(v) for v in views], y

    def test_batches(self, batch_size=None):
        yield from self._batches(self.test_set, batch_size)

    def holdout_batches(self, batch_size=None):
        yield from self._batches(self.holdout_set, batch_size)

    def _batches(self, dataset, batch_size):
        n, b = len(dataset), batch_size or 256
        for (x,), y in self.loader(dataset, [list(range(i, min(i + b, n))) for i in range(0, n, b)]):
            yield self.normalize(x), y


def read_image_folder(files, workers, size=32):
    """The (path, class index) list of list_image_folder decoded: RGB size x size uint8 images and their labels."""
    from concurrent.futures import ThreadPoolExecutor
    from PIL import Image

    def decode(path):
        img = open_rgb(path)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        x = np.stack(list(pool.map(decode, [f for f, _ in files], chunksize=256)))
    y = np.array([c for _, c in files], dtype=np.int64)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)


def load_folder(data_dir, workers):
    """DIR/train and DIR/test (or DIR/val), checked as on the streamed path (the same class folders, none empty),
    decoded once and cached as DIR/.okd-cache.pt (or under ~/.cache/okd when DIR is read-only); the cache is
    used only while its record of the files (names, sizes, modification times) is theirs, and rebuilt, with a
    line, when they changed (an image edited in place), when it is damaged, or when it predates that record.
    Returns the images and labels, the number of classes and their names."""
    test_name = next((n for n in ("test", "val") if os.path.isdir(os.path.join(data_dir, n))), None)
    if not os.path.isdir(os.path.join(data_dir, "train")) or test_name is None:
        raise UsageError(f"--data-dir {data_dir} must hold train/<class>/* and test/<class>/* (or val/)")
    classes, train_files, test_files = list_train_test(os.path.join(data_dir, "train"),
                                                       os.path.join(data_dir, test_name))
    counts, files = [len(train_files), len(test_files)], files_record(data_dir, train_files + test_files)
    key = os.path.abspath(data_dir)
    caches = [os.path.join(data_dir, ".okd-cache.pt"),
              os.path.join(os.path.expanduser("~/.cache/okd"), key.strip("/").replace("/", "_") + ".pt")]
    for path in caches:
        if os.path.exists(path):
            try:
                c = load_checkpoint(path)  # its checksums verified
            except UsageError as e:  # damaged or unreadable: what is wrong with it, not what to do about it
                print(f"note: {str(e).split('; ')[0]}; decoding the images again", flush=True)
                continue
            if c.get("counts") == counts and c.get("classes") == classes and c.get("files") == files:
                return c["train_x"], c["train_y"], c["test_x"], c["test_y"], len(classes), classes
            print(f"note: the images in {data_dir} " + ("changed (their names, sizes or modification times) since "
                  if "files" in c else "may have changed since ") + f"{path} was decoded from them; decoding them "
                  f"again", flush=True)
    train_x, train_y = read_image_folder(train_files, workers)
    test_x, test_y = read_image_folder(test_files, workers)
    blob = dict(counts=counts, classes=classes, files=files, train_x=train_x, train_y=train_y, test_x=test_x,
                test_y=test_y)
    for path in caches:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            atomic_save(blob, path)
            break
        except OSError:
            continue
    return train_x, train_y, test_x, test_y, len(classes), classes


def files_record(root, files):
    """A digest of the files' names (under root), sizes and modification times: an image changed in place changes it."""
    digest, skip = hashlib.sha256(), len(os.path.join(root, ""))  # paths are root/<split>/<class>/<image>
    for path, label in files:
        stat = os.stat(path)
        digest.update(f"{path[skip:]}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


CINIC_STATS = ((0.4789, 0.4723, 0.4305), (0.2421, 0.2383, 0.2587))


def load_mnist(data_dir):
    """MNIST's 28x28 grey digits as 3-channel 32x32 images (2 px of black border, the grey copied thrice)."""
    import torchvision
    sets = []
    for train in (True, False):
        ds = torchvision_set(torchvision.datasets.MNIST, data_dir, "mnist",
                             f"put torchvision's MNIST/raw/*-ubyte files under {data_dir}", train=train)
        x = F.pad(torch.as_tensor(ds.data), (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1).contiguous()
        sets += [x, torch.as_tensor(ds.targets, dtype=torch.int64)]
    return (*sets, 10)


def load_stl10(data_dir):
    """STL-10's labelled 96x96 images (5,000 train, 8,000 test; the unlabelled split is not used)."""
    import torchvision
    sets = []
    for split in ("train", "test"):
        ds = torchvision_set(torchvision.datasets.STL10, data_dir, "stl10",
                             f"put torchvision's stl10_binary/ folder under {data_dir}", split=split)
        sets += [torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels, dtype=torch.int64)]
    return (*sets, 10)



# ==================================================================================================
# Several processes: torchrun
# ==================================================================================================
# `torchrun --nproc_per_node=N script.py ...` starts N copies of a script, each with its RANK, LOCAL_RANK and
# WORLD_SIZE in the environment. Every process holds all the students and the method's own modules, wrapped
# once in DistributedDataParallel (a step's gradients are averaged over the processes in its one backward).
# --batch-size stays the global batch: process r trains on images r, r + N, r + 2N, ... of every batch, with
# the augmentation one process would draw for them, so the order of the images, every process's generator
# and the checkpoint are the same for any N, and a run resumes on another number of processes. What N
# changes: batch-norm statistics come from each process's share (--sync-bn: from the global batch, on GPUs),
# and so does anything a method computes per batch (KDCL linear's ensemble weights). Rank 0 evaluates, logs,
# writes checkpoints and exports; after every epoch the others take its state.

def start_processes(settings):
    """Join the torchrun run's process group (NCCL on GPUs, gloo on CPU), unless the caller already has;
    from here only rank 0 prints. True when this call made the group (and its caller ends it)."""
    if not settings.distributed or dist.is_initialized():
        return False
    if settings.device.type == "cuda":
        torch.cuda.set_device(settings.device)
    dist.init_process_group("nccl" if settings.device.type == "cuda" else "gloo")
    if settings.rank != 0:
        sys.stdout = open(os.devnull, "w")
    return True


def agree(settings, work):
    """work() on every process; if it failed on any, every process stops with the failures' sentences,
    said once by rank 0 (a data folder missing on one node stops the run before training starts)."""
    try:
        result, failure = work(), None
    except UsageError as e:
        result, failure = None, str(e)
    if settings.world_size > 1:
        failures = [None] * settings.world_size
        dist.all_gather_object(failures, failure)
        said = {}
        for r, f in enumerate(failures):
            if f is not None:
                said.setdefault(f, []).append(r)
        if said:
            everyone = len(said) == 1 and len(next(iter(said.values()))) == settings.world_size
            raise SharedError("; ".join(f if everyone else f"{f} (rank {', '.join(map(str, ranks))})"
                                        for f, ranks in said.items()))
    if failure is not None:
        raise UsageError(failure)
    return result


def share_state(method, settings):
    """Every process takes rank 0's parameters and buffers (what epoch_end changed there: KDCL's ensemble
    weights; batch-norm statistics, which each process gathers from its own share)."""
    if settings.world_size > 1:
        for t in itertools.chain(method.parameters(), method.buffers()):
            dist.broadcast(t.data, 0)


def share_results(results, settings):
    """Rank 0's results on every process: under torchrun the others wait here until its files are written."""
    if settings.distributed:
        results = [results]
        dist.broadcast_object_list(results, 0)
        results = results[0]
    return results


def lost_contact(error):
    """Whether an error raised by a collective means that another process is gone."""
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted"))


def end_run(own_group, out_dir):
    """A run's end: rank 0's lock on its folder released, the process group this run made left."""
    release_out_dir(out_dir)
    end_processes(own_group)


def end_processes(own_group):
    """Leave the process group this run made (before exiting on an error too: not leaving it aborts the process
    on exit)."""
    if own_group and dist.is_initialized():
        dist.destroy_process_group()


# ==================================================================================================
# Flags: the shared ones, --recipe, --baseline, their checks, the output folder
# ==================================================================================================

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence, no usage dump; under torchrun rank 0 says it for every process
        self.exit(2, f"error: {message} (see --help)\n" if os.environ.get("RANK", "0") == "0" else None)


def parse_flags(name, add_arguments=None, argv=None, doc=None):
    """A script's flags as given (the shared ones, then its own), --recipe's values as their defaults, checked;
    with --baseline only vanilla's. Returns (args, the recipe's record: recipe_record); a mistake ends in one
    sentence (said by rank 0 alone under torchrun: every process makes it) and exit status 2."""
    parser = make_parser(doc or __doc__)
    if add_arguments is not None:
        add_arguments(parser)  # a method file's add_arguments also sets parser.recipes, its RECIPES
    try:
        recipe = apply_recipe(parser, getattr(parser, "recipes", None) or {}, argv)
        args, given = parse_given(parser, argv)
        if args.baseline:
            args, recipe, name = baseline_args(args), baseline_recipe(recipe), "vanilla"
        sources = getattr(parser, "recipe_sources", {}).get(args.recipe, {})
        args = check_args(args, name, given | set(recipe))  # a recipe's values count as given
        return args, recipe_record(args, recipe, sources)
    except UsageError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM while the flags are checked (a checkpoint verified)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"interrupted ({signal_name(e)}) before the run started; nothing was written", file=sys.stderr)
        sys.exit(128 + getattr(e, "signum", signal.SIGINT))


def parse_given(parser, argv):
    """The flags (their defaults where the command line does not give them) and the names of those it gives."""
    defaults, unset = parser.parse_args([]), object()
    parsed = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(defaults)}))
    given = {k for k, v in vars(parsed).items() if v is not unset}
    return argparse.Namespace(**{k: v if k in given else getattr(defaults, k) for k, v in vars(parsed).items()}), given


def shared_flags():
    """The dests of the shared flags (those every script has)."""
    return set(vars(make_parser().parse_args([])))


def baseline_recipe(recipe):
    """The part of a method's recipe the vanilla baseline trains with (--baseline): its shared flags (training
    recipe, architectures, data), without the temperature."""
    shared = shared_flags()
    return {k: v for k, v in recipe.items() if k in shared and k != "T"}


def baseline_args(args):
    """--baseline's flags: a method script's, less its own (and --T, which vanilla does not use)."""
    shared = shared_flags()
    return argparse.Namespace(**{k: (None if k == "T" else v) for k, v in vars(args).items() if k in shared})


def recipe_flags(recipe):
    """A recipe ({flag dest: value}) as the command-line flags it stands for, e.g. ['--epochs 300', '--no-nesterov']."""
    flags = []
    for dest, value in recipe.items():
        flag = "--" + dest.replace("_", "-")
        value = f"{value:g}" if isinstance(value, float) else value
        flags.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    return flags
def recipe_record(args, recipe, sources):
    """What args.json and results.json record of --recipe: its values as flags, those the command gave otherwise,
    and where each value comes from."""
    flags = recipe_flags(recipe)
    return {"recipe_flags": flags,
            "recipe_overridden": [f for (dest, v), f in zip(recipe.items(), flags) if getattr(args, dest) != v],
            "recipe_sources": [f"{f}: {source_of(sources, dest)}" for dest, f in zip(recipe, flags)]}


def source_of(sources, dest):
    """Where a recipe's value comes from ({source: (dests)}, a method file's RECIPE_SOURCES entry)."""
    return next((source for source, dests in sources.items() if dest in dests), "not stated")


def apply_recipe(parser, recipes, argv):
    """--recipe NAME: the recipe's values become the parser's defaults (so --help shows them and any flag given
    explicitly still wins), and every recipe is listed under --help, each value beside its source
    (parser.recipe_sources). Returns the recipe ({} without --recipe)."""
    lines = ["recipes (--recipe NAME sets these defaults; a flag given explicitly still wins), each value under "
             "its source:"]
    for name, recipe in recipes.items():
        sources = getattr(parser, "recipe_sources", {}).get(name, {})
        lines.append(f"  {name}")
        groups = {}
        for dest, flag in zip(recipe, recipe_flags(recipe)):
            groups.setdefault(source_of(sources, dest), []).append(flag)
        for source, flags in groups.items():
            lines.append(f"    {source}:")
            for flag in flags:
                if len(lines[-1]) + len(flag) > 110:
                    lines.append(" " * 6)
                lines[-1] += " " + flag
    parser.epilog = "\n".join(line.rstrip() for line in lines) if recipes else None
    recipe_flag = next(a for a in parser._actions if a.dest == "recipe")  # its choices, not "(default: None)"
    recipe_flag.help += (f"; choices: {', '.join(recipes)}" if recipes else "; this script has none") + \
        "%(default).0s"
    pre = Parser(add_help=False)  # --recipe is read before --help is printed, so that help shows its defaults
    pre.add_argument("--recipe", default=None)
    name = pre.parse_known_args(argv)[0].recipe
    if name is None:
        return {}
    if name not in recipes:
        raise UsageError(f"unknown recipe '{name}'; " + (f"choose from {', '.join(recipes)}" if recipes else
                         "this script has none (a paper's baseline: <method>.py --recipe paper --baseline)"))
    unknown = set(recipes[name]) - set(vars(parser.parse_args([])))
    assert not unknown, f"recipe {name} sets flags this script does not have: {sorted(unknown)}"
    parser.set_defaults(**recipes[name])
    return recipes[name]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults beside every flag, and the recipes (the epilog) one per line."""


def make_parser(doc=None):
    p = Parser(description=(doc or "").split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument
    a("--recipe", default=None, metavar="NAME",
      help="a paper's recipe (listed at the end, each value under its source: the paper's section or table, the "
           "official code's file, or this project where both are silent): its flags become the defaults shown "
           "here. A method's `paper` is its paper's CIFAR setting, `paper-imagenet` its ImageNet one (with "
           "--baseline: that paper's baseline). No lr warm-up where the paper has none (--lr-warmup 0), "
           "although students that teach each other can collapse without one (README 'Learning-rate warm-up'); "
           "add --lr-warmup 5 for ours")
    a("--baseline", action="store_true",
      help="train the vanilla baseline instead of this script's method: the students alone, each on the labels "
           "(named vanilla in the results), with this script's --recipe and shared flags; the flags vanilla has "
           "not (--T, this script's own) are ignored")
    a("--arch", default="resnet32", help="backbone of every student, or a comma list, one per student")
    a("--students", type=int, default=2, help="number of students (networks trained together)")
    a("--dataset", default="cifar100", choices=DATASETS,
      help="folder, cinic10 = ImageFolder layout DIR/train/<class>/*, DIR/test/<class>/*; imagenet = DIR/train, "
           "DIR/val, streamed from disk; synthetic needs no files")
    a("--data-dir", default="./data", help="where the dataset is (downloaded to, for cifar10/100, mnist, stl10)")
    a("--stream", action="store_true",
      help="folder, cinic10: stream the images from disk like imagenet instead of holding them on the device")
    # `%(default).0s` prints nothing: it only keeps the formatter from adding "(default: None)" after the real one
    a("--image-size", type=int, default=None,
      help="streamed data: the crop the networks see, in pixels (default: 224)%(default).0s")
    a("--augment", default="crop+flip", choices=["none", "crop", "crop+flip"],
      help="training augmentation: none, a random crop (in memory: of the image padded by 1/8 of its size; "
           "streamed: RandomResizedCrop), or the crop and a random horizontal flip (never a flip on MNIST)")
    a("--pad-mode", default="zeros", choices=["zeros", "reflect"],
      help="in-memory data: what pads the image before its random crop, zeros or its mirror image (reflect, "
           "torchvision's Pad(padding_mode='reflect')); streamed data is cropped without padding")
    a("--epochs", type=int, default=200, help="training epochs")
    a("--batch-size", type=int, default=128, help="images per step (each student sees all of them)")
    a("--lr", type=float, default=0.1, help="initial SGD learning rate")
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--nesterov", action=argparse.BooleanOptionalAction, default=True, help="Nesterov momentum")
    a("--wd", type=float, default=5e-4, help="weight decay")
    a("--schedule", default="multistep", choices=["multistep", "cosine"], help="learning-rate schedule")
    a("--milestones", default="0.5,0.75",
      help="multistep: epochs where lr *= gamma; values below 1 are fractions of --epochs")
    a("--gamma", type=float, default=0.1, help="multistep decay factor")
    a("--lr-warmup", type=float, default=5.0,
      help="epochs (fractions allowed) of linear per-step lr warm-up from 0, for every optimizer; 0: none. A "
           "short run gets at most half of the epochs before the lr first decays (said in one line), so that it "
           "reaches --lr")
    a("--lr-warmup-start", type=float, default=0.0, help="the fraction of --lr the warm-up starts from")
    a("--T", type=float, default=None, help="distillation temperature (each method sets its paper's default)")
    a("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    a("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a("--amp", default="auto", choices=["auto", "bf16", "off"], help="bf16 autocast (auto: on for CUDA)")
    a("--compile", action="store_true", help="torch.compile the training step")
    a("--quiet", action="store_true", help="only the per-epoch line: no progress line inside an epoch")
    a("--tensorboard", type=tensorboard_dir, default=None, metavar="DIR",
      help="also write the per-epoch scalars (metrics.jsonl's, lr included) for TensorBoard into DIR "
           "(needs the tensorboard package)")
    a("--sync-bn", action="store_true",
      help="under torchrun on GPUs: batch-norm statistics over the global batch, not each process's share")
    a("--workers", type=int, default=max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
      help="threads decoding a folder data set once (in memory); DataLoader worker processes (streamed), per "
           "process under torchrun (default: %(default)s, this machine's cores shared out among its processes)")
    a("--out-dir", default=None, help="output folder (default: runs/<method>_<arch>_<dataset>_seed<seed>, then "
      "_limit<N>, _stream, _<S>px where those flags are given; --dataset folder adds the folder's name: "
      "folder-<name>)%(default).0s")
    a("--resume", action="store_true",
      help="continue the run in --out-dir from its last.pt, with the run's value of every flag not given; of those "
           "given, only --epochs, --data-dir (the same images), --quiet, --tensorboard, --device, --amp, --compile "
           "and --workers may differ from the run's; a finished run missing results.json or an export gets them")
    a("--limit-train", type=int, default=0, help="class-balanced subset of N training images (0: all)")
    a("--limit-test", type=int, default=0, help="class-balanced subset of N test images (0: all)")
    return p




def check_args(args, name, given=None):
    """Refuse, in one sentence, a flag value the run cannot use: on its own, with the other flags, on this
    machine, under this torchrun launch, or with what --out-dir already holds (a live run, another run, or with
    --resume a run of other flags). Fills in --out-dir's default (made from the other flags, see default_out_dir)
    and, with --resume, the run's value of each flag not `given` (their names; None: every flag is given);
    returns args."""
    command = dict(vars(args))  # the flags as parsed, before --out-dir's default
    if args.out_dir is None:
        args.out_dir = default_out_dir(args, name)
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UsageError(f"--out-dir {args.out_dir} is a file, not a folder; pass another --out-dir")
    if os.environ.get("RANK", "0") == "0" and os.path.isdir(args.out_dir):  # rank 0 takes the lock (claim_out_dir)
        check_not_in_use(args.out_dir)
    if args.resume:
        resume_flags(args, name, given)
    if args.students < 1:
        raise UsageError(f"--students must be at least 1, got {args.students}")
    archs = student_archs(args)
    if len(archs) != args.students:
        raise UsageError(f"--arch lists {len(archs)} architectures but --students is {args.students}; "
                         f"give one name, or one per student")
    for arch in archs:
        if arch not in ARCHS:
            raise UsageError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.batch_size < 2:
        raise UsageError("--batch-size must be at least 2 (batch normalisation needs two samples)")
    for flag, value, fine, must in (("--lr", args.lr, args.lr > 0, "a positive number"),
                                    ("--gamma", args.gamma, args.gamma > 0, "a positive number"),
                                    ("--wd", args.wd, args.wd >= 0, "a non-negative number"),
                                    ("--momentum", args.momentum, 0 <= args.momentum < 1, "in [0, 1)")):
        if not (fine and math.isfinite(value)):
            raise UsageError(f"{flag} must be {must}, got {value:g}")
    if not 0 <= args.lr_warmup < math.inf:
        raise UsageError(f"--lr-warmup must be a non-negative number of epochs, got {args.lr_warmup}")
    if not 0 <= args.lr_warmup_start <= 1:
        raise UsageError(f"--lr-warmup-start must be a fraction of --lr in [0, 1], got {args.lr_warmup_start}")
    if args.nesterov and args.momentum == 0:
        raise UsageError("Nesterov momentum needs --momentum above 0; pass --no-nesterov for plain SGD")
    if args.T is not None and not 0 < args.T < math.inf:
        raise UsageError(f"--T must be a positive number, got {args.T}")
    if args.limit_train < 0 or args.limit_test < 0:
        raise UsageError("--limit-train and --limit-test must be non-negative")
    if args.stream and args.dataset not in ("folder", "cinic10"):
        raise UsageError(f"--stream is for folder data sets (folder, cinic10); {args.dataset} "
                         f"{'is always streamed' if args.dataset == 'imagenet' else 'is held in memory'}")
    if args.image_size is not None and args.image_size < 16:
        raise UsageError(f"--image-size must be at least 16 (pixels), got {args.image_size}")
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")
    try:
        milestone_epochs(args)
    except ValueError:
        raise UsageError(f"--milestones must be a comma list of numbers, got '{args.milestones}'") from None
    check_device(args)
    if not args.resume and any(os.path.exists(os.path.join(args.out_dir, f)) for f in ("last.pt", "results.json")):
        raise UsageError(existing_run(args.out_dir, command))
    return args


def milestone_epochs(args) -> list:
    """--milestones in epochs: values below 1 are fractions of --epochs (ValueError for a value that is no
    number). A fraction of a very short run may round to epoch 0: it is dropped."""
    epochs = [round(m * args.epochs) if m < 1 else int(m)
              for m in (float(m) for m in args.milestones.split(",") if m.strip())]
    return [e for e in epochs if e >= 1]


def first_decay_epoch(args) -> int:
    """The epoch at which the schedule first lowers the lr: the first milestone (multistep), else the end of the
    run (cosine, or milestones beyond it)."""
    return min([*milestone_epochs(args), args.epochs]) if args.schedule == "multistep" else args.epochs


def effective_warmup(args) -> float:
    """The warm-up a run gets, in epochs: --lr-warmup, but at most half of the epochs before the lr first decays,
    so that a run trains at --lr before its first decay (the README's 40-epoch regime, milestones 20 and 30,
    keeps its 5 epochs; a 2-epoch run, first decay after epoch 1, warms up over half an epoch)."""
    return min(args.lr_warmup, first_decay_epoch(args) / 2)


def check_device(args):
    """--device on this machine, and the flags a torchrun launch (WORLD_SIZE, LOCAL_RANK in the environment)
    cannot honour: one sentence each."""
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for but this machine has no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got '{device}'")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not (world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ):
        return
    if device.startswith("cuda"):
        if device != "cuda" and device != f"cuda:{os.environ.get('LOCAL_RANK', '0')}":
            raise UsageError(f"under torchrun each process takes the GPU of its LOCAL_RANK: pass --device cuda "
                             f"(or auto), not {device}")
    elif args.sync_bn:
        raise UsageError("--sync-bn needs GPUs (torch's SyncBatchNorm does not run on CPU)")
    if args.batch_size % world_size or args.batch_size // world_size < 2:
        raise UsageError(f"--batch-size {args.batch_size} is the global batch: it must split into equal shares of "
                         f"at least 2 images over the {world_size} processes")

def default_out_dir(args, name):
    """runs/<method>_<arch>_<dataset>_seed<seed>, followed by whatever else changes the training images: the
    folder's name for --dataset folder, _limit<N> (--limit-train), _stream, _<S>px (--image-size). Two runs on
    other images never share a folder; runs that differ in another flag are told which one by existing_run."""
    dataset = args.dataset
    if args.dataset == "folder":
        dataset += "-" + (os.path.basename(os.path.abspath(args.data_dir)) or "root")
    run = f"{name}_{args.arch.replace(',', '+')}_{dataset}_seed{args.seed}"
    run += f"_limit{args.limit_train}" * bool(args.limit_train) + "_stream" * bool(args.stream)
    run += f"_{args.image_size}px" * bool(args.image_size)
    return os.path.join("runs", run)


def existing_run(out_dir, command):
    """The sentence for an --out-dir that already holds a run: the flags where this command differs from that
    run's args.json (other than those a continued run may change), or how to continue it."""
    try:
        with open(os.path.join(out_dir, "args.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    differ = differing_flags(saved, command, ("out_dir", "resume", "epochs") + THIS_MACHINE)
    if not differ:
        return f"{out_dir} already holds a run; pass --resume to continue it, or another --out-dir"
    return (f"{out_dir} already holds a run with {shown_flags(saved, differ)} (this command: "
            f"{shown_flags(command, differ)}); pass another --out-dir to keep both, or continue that run with --resume "
            f"--out-dir {out_dir} (its flags are taken from it)")



# ==================================================================================================
# Errors: one sentence each, a non-zero exit status, nothing saved lost
# ==================================================================================================

class UsageError(Exception):
    """A mistake the user can fix (bad flag, missing data, wrong checkpoint): printed as one sentence."""


class SharedError(UsageError):
    """A stop every process of a torchrun run finds at the same time (a non-finite loss): printed once."""


def stop(error, args, settings, own_group, created):
    """How main() ends on an error a user can cause or fix: one sentence on stderr and an exit status (2: a
    mistake, 1: a fault, 130 / 143: interrupted by Ctrl-C / SIGTERM, 141: its output closed), the checkpoints
    written so far kept and the folder's lock released. Returns for any other error, which main() re-raises with
    its traceback."""
    release_out_dir(args.out_dir)
    rank = settings.rank
    said = f"error{f' (rank {rank})' if rank else ''}"
    signum = getattr(error, "signum", None) or INTERRUPT["signal"] or \
        (signal.SIGINT if isinstance(error, KeyboardInterrupt) else None)
    if signum:  # whatever it interrupted: a step, a save (finished first), a collective, a DataLoader
        if rank == 0:
            print(f"interrupted ({signal_name(error, signum)}): {kept_checkpoint(args.out_dir)}", file=sys.stderr)
        remove_if_empty(args.out_dir, created)
        sys.exit(128 + signum)
    if isinstance(error, UsageError):  # under torchrun: one line from rank 0, or from the one process that failed
        if rank == 0 or not isinstance(error, SharedError):
            print(f"{said}: {error}", file=sys.stderr)
        end_processes(own_group)
        remove_if_empty(args.out_dir, created)
        sys.exit(2)
    if isinstance(error, torch.OutOfMemoryError):  # before RuntimeError, of which it is one
        print(f"{said}: out of memory on {settings.device} at --batch-size {args.batch_size}"
              f"{f' over {settings.world_size} processes' if settings.world_size > 1 else ''}; "
              f"lower it (and --lr with it), or use more GPUs", file=sys.stderr)
        sys.exit(2)
    if isinstance(error, RuntimeError) and settings.distributed and lost_contact(error):
        print(f"error (rank {rank}): another process of this run stopped (its error line, or torchrun's report "
              f"of how it ended, says why); continue from the last checkpoint with --resume --out-dir "
              f"{args.out_dir}", file=sys.stderr)
        sys.exit(1)
    if isinstance(error, BrokenPipeError):  # the program reading the run's output ended (`| head`)
        with contextlib.suppress(OSError, ValueError):  # no second error when Python exits and flushes it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with contextlib.suppress(OSError):
            print(f"stopped: the output of this run was closed by the program reading it (such as `| head`; "
                  f"write it into a file with > log); {kept_checkpoint(args.out_dir)}", file=sys.stderr)
        sys.exit(141)
    if isinstance(error, OSError):  # a write the probe could not foresee (a full disk): the checkpoints written stay
        print(f"{said}: {write_failure(error, args.out_dir)}", file=sys.stderr)
        end_processes(own_group)
        remove_if_empty(args.out_dir, created)
        sys.exit(1)


def signal_name(error, signum=None):
    signum = signum or getattr(error, "signum", signal.SIGINT)
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def kept_checkpoint(out_dir):
    """Where a stopped run stands: its last good checkpoint and how to continue, or why there is none."""
    last = os.path.join(out_dir, "last.pt")
    if not os.path.isdir(out_dir):
        return f"the folder {out_dir} was removed during the run, its checkpoints with it; start the run again"
    ckpt = peek_checkpoint(last)
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        return "no checkpoint had been written; start the run again"
    try:
        with open(os.path.join(out_dir, "results.json")) as f:
            finished = json.load(f)["epochs"] == ckpt["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        finished = False
    if finished and ckpt["epoch"] == ckpt.get("args", {}).get("epochs"):
        return f"the run had finished: its files in {out_dir} are written"
    return (f"the last good checkpoint {last} (epoch {ckpt['epoch']}) is untouched; continue with --resume "
            f"--out-dir {out_dir}")


def make_out_dir(out_dir):
    """Create --out-dir and write (then remove) a file in it, so that a folder that cannot be written stops the
    run in one sentence before any data is loaded. True when this call created the folder."""
    created = not os.path.isdir(out_dir)
    probe = os.path.join(out_dir, f".write-test{os.getpid()}")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"--out-dir {out_dir} cannot be written ({os_reason(e)}); pass a folder you can write "
                         f"to") from None
    return created


def os_reason(error):
    """What an OSError says, in words: the system's reason and the path it names."""
    reason = "a part of the path is a file, not a folder" if isinstance(error, NotADirectoryError) \
        else (error.strerror or type(error).__name__).lower()
    return f"{reason}: {error.filename}" if error.filename else reason


def write_failure(error, out_dir):
    """The sentence for a file operation that failed during a run (a full disk, a folder removed under it)."""
    import errno
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "make room and continue" if full else "continue, once it can be written,"
    kept = kept_checkpoint(out_dir).replace("; continue", f"; {fix}")
    return f"a file could not be written or read ({os_reason(error)}); {kept}"


def remove_if_empty(out_dir, created):
    """A run that stops before writing anything leaves no empty folder of its own behind."""
    if created:
        try:
            os.rmdir(out_dir)
        except OSError:
            pass  # not empty (or already gone): keep what is there


if __name__ == "__main__":
    main()
