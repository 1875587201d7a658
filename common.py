# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""Shared code for every method. Part I, read top to bottom in the order a run goes, is all a method runs in: main()
(flags, settings, run folder, data, method), fit() (the epochs), train_epoch() (the step), the learning rate,
evaluation and its heads, the vanilla baseline, the CIFAR backbones and the data held in memory. Part II, below one
banner, is the rest: the run folder, checkpoints, progress, torchrun, flags, other backbones and data, errors.

Run alone it trains K independent students, the *vanilla* baseline every method is compared with (a method script
trains it with its own recipe too: `python ffsd.py --recipe paper --baseline`):

    python common.py --arch resnet32 --students 2                        # CIFAR-100
    python common.py --dataset synthetic --epochs 2 --arch resnet20      # zero-setup demo on CPU
    torchrun --standalone --nproc_per_node=4 common.py --arch resnet32   # 4 GPUs (every script)

The method contract (duck-typed; every method file states it again in short, so that it can be copied alone into
another project and needs nothing from here for its modules and loss):

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
    method.set_epoch(epoch)   called before each training epoch (from 0) to set ramp-up weights; they are tensors
                              changed in place (no recompile under torch.compile), and a loop that never calls it
                              trains at the full weights
    method.epoch_end(epoch, data)     called after each training epoch; may return {name: float} to log
    method.export()           {name: payload} of deployable models as plain data, saved as OUT/<name>.pt at the
                              end with the run's preprocessing added (default: every student as OUT/s<i>.pt)
"""
import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

METHODS = ("vanilla", "dml", "kdcl", "ffl", "ffcl", "fefr", "ffsd", "mkb_cl", "one")  # README: "Adding a method"


def main(name="vanilla", add_arguments=None, build=None, argv=None, doc=None):
    """A script's run: its flags (a method file passes its name, add_arguments and build), the settings made from
    them, the run folder, the data and the method, then fit(). A mistake ends in one sentence and an exit status."""
    catch_interrupts()  # Ctrl-C and SIGTERM alike end the run in one sentence (stop(), Part II)
    args, recipe = parse_flags(name, add_arguments, argv, doc)  # as given; --recipe's values as their defaults
    if args.nproc_per_node > 1 and "RANK" not in os.environ:  # this command again in N processes (Part II)
        return launch(args.nproc_per_node, sys.argv[1:] if argv is None else argv)
    name, build = ("vanilla", None) if args.baseline else (name, build)  # --baseline: the students alone
    settings = derive_settings(args, recipe)
    with RunFolder(args, settings, name) as run:  # torchrun joined, --out-dir locked; an error: one sentence
        torch.manual_seed(args.seed)
        data, method = run.agree(lambda: set_up(args, settings, build))  # on every process, or on none
        return fit(method, data, args, settings, run)


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
    """The run's settings from its flags (parse_flags has refused what this machine or torchrun cannot do)."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    distributed = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun, even with one process
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if distributed and device.startswith("cuda"):  # each process takes the GPU of its LOCAL_RANK
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    on_gpu = device.startswith("cuda")
    return Settings(device=torch.device(device), bf16=args.amp == "bf16" or (args.amp == "auto" and on_gpu),
                    channels_last=on_gpu, rank=rank, world_size=world_size, distributed=distributed,
                    milestone_epochs=milestone_epochs(args), warmup_epochs=effective_warmup(args),
                    archs=student_archs(args), recipe=recipe or recipe_record(args, {}))


def fit(method, data, args, settings, run=None) -> dict:
    """Train `method` on `data` for --epochs, every head evaluated after each epoch. `run` (a RunFolder; None writes
    nothing) continues the run's last.pt with --resume, keeps each epoch (metrics.jsonl, last.pt, best.pt) and at the
    end the exports and results.json. Under torchrun every process calls it and returns rank 0's results."""
    run = run or RunFolder(args, settings, files=False)
    method = place(method, args, settings)  # on the device; channels_last on GPUs; --sync-bn under torchrun
    optimizers = make_optimizers(method, args)
    gen = torch.Generator(device=settings.device).manual_seed(args.seed)  # order, augmentation: same everywhere
    record = run.begin(method, data, optimizers, gen)  # args.json; --resume: last.pt's record, weights, states
    step = step_module(method, args, settings)  # torchrun: one DistributedDataParallel; --compile
    batch = min(args.batch_size, len(data.train_y)) // settings.world_size * settings.world_size  # the global batch
    steps = len(data.train_y) // batch  # the last incomplete batch is dropped; every epoch reshuffles
    for epoch in range(record["epoch"], args.epochs):
        if hasattr(method, "set_epoch"):
            method.set_epoch(epoch)
        method.train()
        t0 = time.perf_counter()
        batches = data.train_batches(gen, batch, steps, getattr(method, "num_views", 1), settings.rank,
                                     settings.world_size)  # each process its share of every batch
        with run.progress(epoch, steps, batch) as progress:  # where the epoch stands, on one line
            losses = train_epoch(step, optimizers, batches, lambda i: lr_factor(args, settings, epoch, i, steps),
                                 settings, progress)
            seconds = seconds_since(t0, settings.device)  # the device's queue included
            if settings.rank == 0:  # the others wait for it (share_state)
                progress.show(f"evaluating on {len(data.test_y)} test images ...")
                scores = evaluate_epoch(method, data, args, settings, epoch, record)
        run.end_epoch(epoch, losses, scores if settings.rank == 0 else {}, seconds, record, method, optimizers, gen)
        share_state(method, settings)  # every process takes rank 0's parameters and buffers
    return run.finish(method, data, record, steps * batch)


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


def train_epoch(step, optimizers, batches, lr_at, settings, progress):
    """One epoch of steps, each: the lr of its step, the method's loss and parts on the batch's views, one
    backward, every optimizer's step. Returns their sums (LossSums), left on the device: no step waits for them."""
    losses = LossSums(progress.steps, settings.world_size)
    for i, (views, y) in enumerate(batches):
        set_lr(optimizers, lr_at(i))  # the warm-up's, per step; then the epoch's schedule value
        if settings.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss, parts = step(views, y)  # every part already weighted: loss = sum(parts)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        losses.add(i, loss, parts)  # every 50 steps, NonFinite if a part was not finite
        progress.update(i + 1, losses)
    return losses


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
    """After a training epoch (rank 0): the method's epoch_end, then every head on the test set (top-1, and top-5
    for 100 classes or more) and `any`, the any-correct top-1 of the heads any_correct_heads names. Updates the
    record's final and best figures and its collapses (warned once per head); returns what to log."""
    logged = (method.epoch_end(epoch, data) or {}) if hasattr(method, "epoch_end") else {}
    with_top5 = data.num_classes >= 100  # top-5 is what ImageNet and CIFAR-100 papers report beside top-1
    final, top_share, top5 = evaluate(method, data, settings)
    for head, acc in final.items():
        if acc > record["best"].get(head, -1.0):
            record["best"][head], record["best_epoch"][head] = acc, epoch + 1
    shortened = settings.warmup_epochs < args.lr_warmup
    warmed_up = epoch >= settings.warmup_epochs  # before, a network that has barely started often predicts one
    for head in collapsed_heads(final, top_share, data.num_classes) if warmed_up else []:  # class, uncollapsed
        if head not in record["collapsed"]:
            record["collapsed"][head] = epoch + 1
            print(f"warning: epoch {epoch + 1}: head {head} gives one class to {100 * top_share[head]:.0f} % of "
                  f"the test images at {final[head]:.1f} % top-1: its predictions no longer depend on the input "
                  f"(a collapse); try a longer --lr-warmup (now {settings.warmup_epochs:g}"
                  f"{', shortened from %g by this short run' % args.lr_warmup * shortened}) or a lower --lr",
                  flush=True)
    record["final"], record["final_top5"] = final, top5 if with_top5 else {}
    return {**logged, **{f"top1_{h}": a for h, a in final.items()},
            **{f"top5_{h}": a for h, a in record["final_top5"].items()},
            **{f"top_share_{h}": v for h, v in top_share.items()}}


@torch.no_grad()
def evaluate(module, data, settings=None, batch_size=None):
    """Every head on the test set: (top-1 %, top share, top-5 %), each {head: value}. `module`'s eval forward may
    return a dict of heads, a (logits, features) tuple or logits (head `top1`). With `settings`, in the run's
    layout and precision (channels_last, bf16). Top share: the share of images given the head's most common
    prediction (the collapse signal: 1/C for a balanced test set predicted perfectly, 1.0 for a constant network).
    Top-5: the label among the five highest logits, or the top-1 prediction (so that top-5 >= top-1 where logits
    tie). Head `any` (where any_correct_heads names some): an image counts when any of them is right (an oracle's
    bound, not an ensemble; no top share)."""
    was_training = module.training
    module.eval()
    correct, correct5, counts, n, oracle = {}, {}, {}, len(data.test_y), None
    for x, y in data.test_batches(batch_size):
        if settings is not None and settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(settings.device.type if settings is not None else "cpu", dtype=torch.bfloat16,
                            enabled=settings is not None and settings.bf16):
            out = module(x)
        out = out if isinstance(out, dict) else {"top1": out[0] if isinstance(out, tuple) else out}
        oracle = any_correct_heads(module, list(out)) if oracle is None else oracle
        hits = []  # this batch: (top-1, top-5) right, of each of the oracle's heads
        for head, logits in out.items():  # summed on the device: no host sync per batch
            pred = logits.argmax(1)
            right = pred == y
            right5 = (logits.topk(min(5, logits.shape[1]), 1).indices == y[:, None]).any(1) | right
            correct[head] = correct.get(head, 0) + right.sum()
            correct5[head] = correct5.get(head, 0) + right5.sum()
            counts[head] = counts.get(head, 0) + torch.bincount(pred, minlength=logits.shape[1])
            hits += [(right, right5)] if head in oracle else []
        if hits:
            correct["any"] = correct.get("any", 0) + torch.stack([h for h, _ in hits]).any(0).sum()
            correct5["any"] = correct5.get("any", 0) + torch.stack([h for _, h in hits]).any(0).sum()
    module.train(was_training)
    return ({head: 100.0 * float(c) / n for head, c in correct.items()},
            {head: float(c.max()) / n for head, c in counts.items()},
            {head: 100.0 * float(c) / n for head, c in correct5.items()})


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


def set_up(args, settings, build):
    """The data and the method: build(args, data), or vanilla's students without one (a configuration a method's
    modules cannot be built for, a ValueError: one sentence)."""
    data = load_data(args, settings.device)
    try:
        method = build(args, data) if build is not None else Vanilla(build_students(args, data))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return data, method


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
# Backbones: the CIFAR ResNets and wide ResNets (the torchvision ones are in Part II)
# ==================================================================================================
# Every backbone is a `Backbone`: `stages` run one after another (stage 0 holds the stem), `classifier` maps the
# last stage's output to logits; forward(x) -> (logits, [stage outputs]). A method that changes a stage's output
# before the next stage reads it (MKB-CL) runs `stages` itself.

def build_students(args, data) -> list:
    """One backbone per student from --arch (one name, or a comma list as long as --students), for the data's
    classes and image size (what a method's build() reads of `data`: num_classes, image_size)."""
    return [build_model(arch, data.num_classes, tuple(data.image_size)) for arch in student_archs(args)]


def student_archs(args) -> list:
    """--arch as one name per student: a single name is every student's."""
    archs = [a.strip() for a in args.arch.split(",")]
    return archs * args.students if len(archs) == 1 else archs


def build_model(arch: str, num_classes: int, image_size=32) -> "Backbone":
    """A backbone by zoo name for inputs of image_size px (an int or (H, W)); forward(x) -> (logits, [stage
    outputs]). From IMAGENET_SIZE px up, torchvision's networks keep their ImageNet stem."""
    if arch not in ARCHS:
        raise UsageError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    size = min(image_size) if isinstance(image_size, (tuple, list)) else image_size
    model = tv_backbone(arch, num_classes, small=False) if size >= IMAGENET_SIZE and arch in TV_IMAGENET \
        else ARCHS[arch](num_classes)
    model.image_size = int(size)  # recorded in the exported payload, so load_backbone rebuilds the same shape
    return model


ARCHS = {  # the zoo's names; torchvision's networks (Part II) adapted to 32 px, or native from IMAGENET_SIZE px
    "resnet20": lambda nc: cifar_resnet(20, nc, "resnet20"),
    "resnet32": lambda nc: cifar_resnet(32, nc, "resnet32"),
    "resnet56": lambda nc: cifar_resnet(56, nc, "resnet56"),
    "resnet110": lambda nc: cifar_resnet(110, nc, "resnet110"),
    "wrn_16_2": lambda nc: wide_resnet(16, 2, nc, "wrn_16_2"),
    "wrn_40_2": lambda nc: wide_resnet(40, 2, nc, "wrn_40_2"),
    "wrn_28_10": lambda nc: wide_resnet(28, 10, nc, "wrn_28_10"),
    **{name: (lambda nc, name=name: tv_backbone(name, nc, small=True)) for name in
       ("resnet18", "resnet34", "resnet50", "mobilenetv2", "shufflenetv2", "vgg16", "densenet121")},
}


IMAGENET_SIZE = 64  # inputs at least this large (shorter side, px) get torchvision's native ImageNet shape


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


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ==================================================================================================
# Data held in memory: CIFAR, synthetic images, and every small data set (folders, MNIST, STL-10: Part II)
# ==================================================================================================
# The whole data set lives on the training device as uint8 (N, 3, H, W). Augmentation (a random crop of the image
# padded by H/8 pixels of zeros, or of its mirror image with --pad-mode reflect, and a horizontal flip, drawn per
# image; --augment none or crop drops them) and normalisation are batched tensor ops there: no DataLoader, no
# Python per image. ImageNet and --stream read JPEG files instead (StreamedData, Part II), behind the same calls:
# train_batches() yields ([num_views normalised views], y) for an epoch, test_batches() (x, y).

def load_data(args, device):
    """The data set of --dataset: held whole on the device (Data), or streamed from disk (StreamedData, Part II:
    imagenet, and a folder data set with --stream)."""
    if args.dataset == "imagenet" or args.stream:
        return load_streamed(args, device)
    if args.image_size:
        raise UsageError(f"--image-size is for streamed data (--dataset imagenet, or --stream); {args.dataset} is "
                         f"used at its own size")
    classes, border, stats = None, 0, (None, None)
    if args.dataset == "synthetic":
        train_x, train_y, test_x, test_y, nc = synthetic()
    elif args.dataset in CIFAR_STATS:
        train_x, train_y, test_x, test_y, nc, classes = load_cifar(args.dataset, args.data_dir)
        stats = CIFAR_STATS[args.dataset]
    else:  # folder, cinic10, mnist, stl10 (Part II)
        (train_x, train_y, test_x, test_y, nc, classes), border, stats = load_other(args)
    train, test = subset(train_y, args.limit_train, "--limit-train"), subset(test_y, args.limit_test, "--limit-test")
    return Data(train_x[train], train_y[train], test_x[test], test_y[test], nc, device, *stats,
                flip=args.augment == "crop+flip" and args.dataset != "mnist",  # digits are not mirror-symmetric
                crop=args.augment != "none", pad_mode=args.pad_mode, classes=classes, border=border)


DATASETS = ("cifar10", "cifar100", "cinic10", "folder", "mnist", "stl10", "synthetic", "imagenet")


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


CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


def load_cifar(name, data_dir):
    """CIFAR-10/100 from torchvision's files (downloaded where missing): train and test images and labels, the
    number of classes and their names."""
    sets = []
    for train in (True, False):
        ds = torchvision_set(name.upper(), data_dir, train=train)
        sets += [torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                 torch.as_tensor(ds.targets, dtype=torch.int64)]
    return (*sets, len(ds.classes), list(ds.classes))


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


class Data:
    def __init__(self, train_x, train_y, test_x, test_y, num_classes, device, mean=None, std=None, flip=True,
                 crop=True, pad_mode="zeros", classes=None, border=0):
        self.train_x, self.train_y = train_x.to(device), train_y.to(device)
        self.test_x, self.test_y = test_x.to(device), test_y.to(device)
        self.num_classes, self.device, self.classes, self.border = num_classes, device, classes, border
        self.flip, self.crop, self.pad_mode = flip, crop, pad_mode  # --augment, --pad-mode (never a flip on MNIST)
        self.image_size = tuple(self.train_x.shape[-2:])
        self.pad = max(1, self.image_size[0] // 8)  # 4 px at 32 px (the CIFAR recipe), 12 at STL-10's 96
        self.identity = tensors_identity(num_classes, train_x, train_y, test_x, test_y)  # what --resume checks
        self.stats = [torch.as_tensor(v, dtype=torch.float32).tolist() for v in
                      ((mean, std) if mean is not None else channel_stats(self.train_x))]  # what exports carry
        self.mean, self.std = normalisation(*self.stats, device)
        self.holdout_x = self.holdout_y = None

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
    if not flip:
        return crops
    flips = torch.rand(b * world, 1, 1, 1, device=x.device, generator=generator)[rank::world] < 0.5
    return torch.where(flips, crops.flip(3), crops)


def reflect_index(i, n):
    """Indices i in [-n + 1, 2n - 2] mirrored into [0, n - 1] about the first and last pixel."""
    return (n - 1) - ((n - 1) - i.abs()).abs()


def normalisation(mean, std, device="cpu"):
    """The (1, 3, 1, 1) tensors that normalise uint8 images, from per-channel mean and std in [0, 1] units: the
    same values for a run, an export evaluated later (scripts/evaluate.py) and preprocess_image."""
    return tuple(255 * torch.as_tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (mean, std))


# ##################################################################################################
# Part II: what Part I calls, behind the names it uses there. Nothing below is needed to understand a method or
# the loop. Sections: the run folder (lock, args.json, checkpoints, metrics, results, exports); checkpoint files;
# the progress line and the loss sums; several processes (torchrun); flags and recipes; torchvision's backbones
# and students; the other data sets (folders, the streamed path, MNIST, STL-10); errors.
# ##################################################################################################

# ==================================================================================================
# The run folder: one object for the lock, args.json, the checkpoints, metrics, exports, results and the stop
# ==================================================================================================

class RunFolder:
    """--out-dir as one run's. Entered, it joins torchrun's processes and locks the folder (rank 0: an flock, which
    the system releases however the process ends); begin() writes args.json and, with --resume, loads last.pt;
    end_epoch() appends to metrics.jsonl and writes last.pt (and best.pt); finish() writes the exports, then
    results.json. Every file is written whole or not at all (a temporary file renamed over it), so a signal may stop
    the run anywhere; an error leaving the `with` ends it in one sentence (stop()). Only rank 0 writes; files=False:
    nothing (tests); nested (FFCL's pre-training, a folder of the run) continues its folder, errors left to the run."""

    def __init__(self, args, settings, name="vanilla", files=True, nested=False):
        self.args, self.settings, self.name, self.nested = args, settings, name, nested
        self.out = args.out_dir if files and settings.rank == 0 else None  # where this process writes
        self.lock = self.board = self.saved = None
        self.own_group = self.created = False
        self.epoch = self.steps = self.batch = 0

    def __enter__(self):
        try:
            self.own_group = start_processes(self.settings)
            agree(self.settings, self.claim)  # every process learns whether rank 0 got the folder
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def __exit__(self, kind, error, trace):
        for f in (self.lock, self.board):
            if f is not None:
                f.close()  # the lock released
        if self.own_group and (error is None or isinstance(error, (UsageError, OSError))):  # not after a signal or
            dist.destroy_process_group()  # a lost process; leaving it is needed: not leaving it aborts on exit
        if error is not None and not self.nested:
            stop(error, self)  # exits on every error a user can cause; any other keeps its traceback

    def agree(self, work):
        return agree(self.settings, work)

    def claim(self):
        """Rank 0: the folder made and locked (the holder written in the lock, for the next run to name), the
        temporary files of killed writes removed, and a fresh run's flags written (args.json)."""
        if self.out is None:
            return
        self.created = not os.path.isdir(self.out)
        try:
            os.makedirs(self.out, exist_ok=True)
            self.lock = open(os.path.join(self.out, "run.lock"), "a+")
            locked = lock(self.lock)
        except OSError as e:
            raise UsageError(f"--out-dir {self.out} cannot be written ({os_reason(e)}); pass a folder you can write "
                             f"to") from None
        if not locked:
            self.lock.seek(0)
            holder, self.lock = self.lock.read().strip(), self.lock.close()
            raise UsageError(f"{self.out} is in use by another run ({holder}); wait for it to end, or pass another "
                             f"--out-dir")
        self.lock.truncate(0)
        self.lock.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}, `{command_line()}`\n")
        self.lock.flush()
        for folder, _, names in os.walk(self.out):  # locked: no run is writing them
            for name in names:
                if name.endswith(".tmp"):
                    os.remove(os.path.join(folder, name))
        if not (self.args.resume or self.nested) and any(
                os.path.exists(os.path.join(self.out, f)) for f in ("last.pt", "results.json")):
            raise UsageError(existing_run(self.out, self.args, self.name))
        if not self.args.resume:  # what --resume continues, before anything is trained (FFCL's pretrain/)
            write_json(os.path.join(self.out, "args.json"), saved_args(self.args, self.settings, self.name))

    def begin(self, method, data, optimizers, gen):
        """A run's start, its data and method made: the first line, the record of what was trained (new, or with
        --resume last.pt's, its weights, optimizer states and generators loaded) and args.json."""
        self.saved = saved_args(self.args, self.settings, self.name, data)
        record = {"epoch": 0, "best": {}, "best_epoch": {}, "elapsed": 0.0, "final": {}, "final_top5": {},
                  "collapsed": {}, "changes": []}
        if self.settings.rank == 0:  # what trains on what, where, and where its files go
            args, settings = self.args, self.settings
            processes = f"{settings.world_size} processes, each " if settings.world_size > 1 else ""
            print(f"{self.name}: {args.arch} x{args.students} on {args.dataset} ({len(data.train_y)} train / "
                  f"{len(data.test_y)} test images, {data.num_classes} classes), {processes}"
                  f"{device_name(settings.device)}, {count_params(method) / 1e6:.2f} M parameters -> {args.out_dir}",
                  flush=True)
            warn_if_lr_unreached(args, settings)
        last = os.path.join(self.args.out_dir, "last.pt")
        if self.args.resume and os.path.exists(last):
            record = self.restore(last, method, optimizers, gen, record)
        elif self.args.resume and not self.nested:
            print(f"resumed {self.args.out_dir}: no epoch had finished, so it starts at epoch 1", flush=True)
        if self.out is not None:
            write_json(os.path.join(self.out, "args.json"), {**self.saved, "changes": record["changes"]})
            with contextlib.suppress(OSError), open(os.path.join(self.out, "metrics.jsonl"), "rb+") as f:
                if f.seek(0, os.SEEK_END) and f.seek(-1, os.SEEK_END) is not None and f.read(1) != b"\n":
                    f.write(b"\n")  # a line a killed write cut ends here, so the next stands alone
        return record

    def restore(self, path, method, optimizers, gen, record):
        """last.pt's record, weights, optimizer states and generators, once its flags (its method: resume_flags) and
        its data are this run's; what the resumed run changes (RECORDED) is said and recorded with its epoch; best.pt
        mended."""
        ckpt = load_checkpoint(path)
        before, now = ckpt.get("args", {}), self.saved.get("data")
        refuse_other_flags(path, before, vars(self.args))
        if before.get("data") not in (None, now):
            shown = [f"{d['classes']} classes, {d['train_images']} train / {d['test_images']} test images, fingerprint "
                     f"{d['fingerprint'][:12]}" for d in (now, before["data"])]
            raise UsageError(f"--resume: the data is not what {path} was trained on ({shown[0]}; the run's: "
                             f"{shown[1]}); pass the run's --data-dir ({before.get('data_dir')}) with its images as "
                             f"they were, or another --out-dir")
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
        record = {**record, **{key: ckpt[key] for key in record if key in ckpt}}
        done = record["epoch"]
        changed = {k: [before[k], self.saved[k]] for k in RECORDED if before.get(k, self.saved[k]) != self.saved[k]}
        record["changes"] = record["changes"] + ([{"epoch": done, **changed}] if changed else [])
        said = "; changed from the run so far (results.json records it): " + ", ".join(
            f"{k} {a} -> {b}" for k, (a, b) in changed.items()) if changed else ""
        writes = [f"{n}.pt" for n in exports(method)] + ["results.json"]
        missing = [f for f in writes if not os.path.exists(os.path.join(self.args.out_dir, f))]
        if done >= self.args.epochs and not missing and not self.nested:
            raise UsageError(f"{path} already finished {done} epoch{'s' * (done != 1)}; raise --epochs to train "
                             f"further")
        if done < self.args.epochs:
            print(f"resumed {path} at epoch {done}{said}" + schedule(self.args, done) * ("epochs" in changed),
                  flush=True)
        elif changed and self.out is not None:  # nothing to train: last.pt takes the change itself
            atomic_save({**ckpt, "changes": record["changes"], "args": self.saved}, path)
        if done >= self.args.epochs and missing:
            print(f"{path} has trained its {done} epoch{'s' * (done != 1)}{said}; {', '.join(missing)} missing: "
                  f"writing {', '.join(writes)} (nothing is trained)", flush=True)
        best, epoch = os.path.join(self.args.out_dir, "best.pt"), record["best_epoch"].get(best_head(method, record))
        held = (peek_checkpoint(best) or {}).get("epoch") if os.path.exists(best) else None
        if self.out is not None and epoch not in (None, held) and (epoch == done or held is not None):
            if epoch == done:  # a kill between last.pt and best.pt leaves an older best.pt: that epoch is last.pt's
                same_file(path, best)
            else:
                os.remove(best)
            print(f"{best} held epoch {held}, not the run's best epoch {epoch}: "
                  + ("written again from last.pt" if epoch == done else "removed (that epoch's weights are gone)"))
        return record

    def progress(self, epoch, steps, batch):
        """The line that shows where an epoch stands (rank 0, not --quiet)."""
        self.epoch, self.steps, self.batch = epoch, steps, batch
        return Progress(self.settings.rank == 0 and not self.args.quiet, epoch, self.args.epochs, steps, batch)

    def end_epoch(self, epoch, losses, scores, seconds, record, method, optimizers, gen):
        """After an epoch: the loss sums averaged over the processes; rank 0 appends the epoch to metrics.jsonl (a
        resumed run appends again what its checkpoint lacks: read_metrics keeps an epoch's last line) and
        TensorBoard, writes last.pt, makes best.pt a second name of it at the primary head's best, prints a line."""
        names, sums = losses.names, losses.totals()
        record["epoch"], record["elapsed"] = epoch + 1, record["elapsed"] + seconds
        if self.out is None:
            return
        args, steps = self.args, self.steps
        lr = args.lr * lr_factor(args, self.settings, epoch, steps - 1, steps)  # where the epoch ended
        line = {"epoch": epoch + 1, "lr": lr, **{n: float(v) / steps for n, v in zip(names, sums.tolist())},
                **scores, "seconds": seconds, "images_per_s": steps * self.batch / seconds}
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")
        if args.tensorboard:
            if self.board is None:
                from torch.utils.tensorboard import SummaryWriter  # a resumed run drops what came after its epoch
                self.board = SummaryWriter(args.tensorboard, purge_step=epoch + 1 if epoch else None)
            for key in line.keys() - {"epoch"}:
                self.board.add_scalar(key, line[key], epoch + 1)
            self.board.flush()
        last = os.path.join(self.out, "last.pt")
        atomic_save({**record, "method": self.name, "model": method.state_dict(), "args": self.saved,
                     "optimizers": [o.state_dict() for o in optimizers], "rng": {
                         "torch": torch.get_rng_state(), "gen": gen.get_state().cpu(),
                         "cuda": torch.cuda.get_rng_state(gen.device) if gen.device.type == "cuda" else None}}, last)
        if record["best_epoch"].get(best_head(method, record)) == epoch + 1:
            same_file(last, os.path.join(self.out, "best.pt"))
        eta = record["elapsed"] / (epoch + 1) * (args.epochs - epoch - 1)
        print(f"epoch {epoch + 1}/{args.epochs}  lr {lr:.4g}  loss {line['loss']:.4f}  top1 "
              f"{top1_line(record['final'])}  |  {seconds:.1f}s  {line['images_per_s']:.0f} img/s  run eta "
              f"{format_eta(eta)}", flush=True)

    def finish(self, method, data, record, images_per_epoch):
        """The run's end: the exports, each with what its input needs, then results.json (last: a folder with it
        holds a finished run), then its last line. Every process returns rank 0's results."""
        results = None
        if self.settings.rank == 0:
            results = results_record(method, data, record, self.args, self.settings, self.name, self.saved,
                                     images_per_epoch)
            if self.out is not None:
                for export_name, payload in exports(method, data, self.args).items():
                    atomic_save(payload, os.path.join(self.out, f"{export_name}.pt"))
                write_json(os.path.join(self.out, "results.json"), results)
                print(f"done in {format_eta(results['train_seconds'])}: final top-1 {top1_line(results['final'])}  "
                      f"(results in {self.out})", flush=True)
        if self.settings.distributed:  # the others wait here until rank 0's files are written
            results = [results]
            dist.broadcast_object_list(results, 0)
            results = results[0]
        return results

    def where(self):
        """Where a stopped run stands (stop()'s sentence): its newest checkpoint and how to continue."""
        out = self.args.out_dir
        if not os.path.isdir(out):
            return f"the folder {out} was removed during the run, its checkpoints with it; start the run again"
        found = [(c["epoch"], p) for p in checkpoints(out) if "epoch" in (c := peek_checkpoint(p) or {})]
        if found and (read_json(os.path.join(out, "results.json")) or {}).get("epochs") == found[0][0] == \
                self.args.epochs:
            return f"the run had finished: its files in {out} are written"
        return f"the last good checkpoint {found[0][1]} (epoch {found[0][0]}) is untouched; continue with --resume " \
               f"--out-dir {out}" if found else "no epoch had finished; start the run again"

    def tidy(self):
        """A run that stops before it keeps a checkpoint leaves no folder of its own behind."""
        if self.out is not None and self.created and not checkpoints(self.out):
            shutil.rmtree(self.out, ignore_errors=True)


def checkpoints(out):
    """The run's last.pt, then those of its folders (FFCL's pretrain/)."""
    inner = sorted(os.path.join(e.path, "last.pt") for e in os.scandir(out) if e.is_dir()) if os.path.isdir(out) else []
    return [p for p in [os.path.join(out, "last.pt")] + inner if os.path.isfile(p)]


def lock(f):
    """An exclusive flock on an open file until it is closed or its process ends; False when another holds it.
    Without fcntl (not a POSIX system), no lock."""
    try:
        import fcntl
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except BlockingIOError:
        return False
    return True


def command_line():
    return " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])


def saved_args(args, settings, name, data=None):
    """What args.json, every checkpoint and results.json keep as `args`: the flags, the settings made from them
    (`device` as used), the method, torch's versions; with the data, its input size and identity, and the
    digests of the files the flags name (FFCL's --pretrained)."""
    values = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    values.update({f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "recipe"})
    values.update(device=str(settings.device), device_type=settings.device.type, **settings.recipe, method=name,
                  torch=str(torch.__version__), torchvision=tv_version())
    if data is not None:
        values.update(input_size=list(data.image_size), data=data.identity, files={
            k: files_sha256(v) for k, v in vars(args).items() if k not in ("data_dir", "out_dir") and files_sha256(v)})
    return values


# A resumed run may change these flags (taken from the run where not given): its length (the new schedule is
# said), where its data and files are (the same bytes: their identity is checked), its output, this machine's.
MAY_CHANGE = ("epochs", "data_dir", "quiet", "tensorboard", "out_dir", "resume", "recipe", "baseline")
THIS_MACHINE = ("device", "amp", "compile", "workers", "nproc_per_node")  # never taken from the run
RECORDED = ("epochs", "device", "bf16", "compile", "world_size", "torch", "torchvision")  # a change is recorded


def differing(saved, now):
    """The one comparison of a resume: the flags both hold that differ, but those a resumed run may change and a
    flag naming files of the same bytes elsewhere; equivalent spellings equal (--arch resnet20 and
    resnet20,resnet20 for 2 students; --milestones 0.5 and 100 for 200 epochs)."""
    def normal(flags):
        flags = dict(flags)
        with contextlib.suppress(AttributeError, TypeError, ValueError, KeyError):
            flags["arch"] = student_archs(argparse.Namespace(arch=flags["arch"], students=flags["students"]))
            flags["milestones"] = milestone_epochs(argparse.Namespace(milestones=flags["milestones"],
                                                                      epochs=saved.get("epochs")))
        return flags
    a, b = normal(saved), normal(now)
    moved = {k for k, digests in saved.get("files", {}).items() if k in now and files_sha256(now[k]) == digests}
    return [k for k in b if k in a and a[k] != b[k] and k not in MAY_CHANGE + THIS_MACHINE and k not in moved]


def refuse_other_flags(where, saved, now):
    differ = differing(saved, now)
    if differ:
        raise UsageError(f"--resume: {where} holds a run trained with {shown_flags(saved, differ)} but this command "
                         f"gives {shown_flags(now, differ)}; a resumed run keeps its flags (leave them out to take "
                         f"the run's) but for --epochs, --data-dir and files of the same bytes elsewhere, --quiet, "
                         f"--tensorboard and this machine's (--device, --amp, --compile, --workers, --nproc-per-node); "
                         f"pass another --out-dir to start a new run")


def existing_run(out, args, name):
    """The sentence for an --out-dir that holds a run this command would start again: its method where another,
    else the flags where the two differ (but those a continued run may change), else how to continue it."""
    saved = read_json(os.path.join(out, "args.json")) or {}
    method = saved.get("method") or (peek_checkpoint(os.path.join(out, "last.pt")) or {}).get("method")
    differ = [k for k in differing(saved, vars(args)) if k != "epochs"]
    if method not in (None, name):
        return f"{out} already holds a {method} run, not a {name} one; pass another --out-dir (or continue that " \
               f"run with {method}.py --resume --out-dir {out})"
    return f"{out} already holds a run with {shown_flags(saved, differ)} (this command: " \
           f"{shown_flags(vars(args), differ)}); pass another --out-dir to keep both, or continue that run with " \
           f"--resume --out-dir {out} (its flags are taken from it)" if differ else \
        f"{out} already holds a run; pass --resume to continue it, or another --out-dir"


def shown_flags(values, keys):
    def shown(v):
        return "on" if v is True else "off" if v is False else "not given" if v is None else v
    return ", ".join(f"--{k.replace('_', '-')} {shown(values[k])}" for k in keys)


def schedule(args, done):
    """A resumed run's learning-rate schedule from epoch done + 1, said when --epochs changed."""
    milestones = ", ".join(map(str, milestone_epochs(args))) or "none"
    lr = args.lr * lr_factor(args, argparse.Namespace(milestone_epochs=milestone_epochs(args),
                                                      warmup_epochs=effective_warmup(args)), done, 0, 10 ** 6)
    return f"; the learning-rate schedule is that of {args.epochs} epochs (" + (
        "cosine" if args.schedule == "cosine" else f"milestones at epochs {milestones}") + \
        f"), epoch {done + 1} starts at lr {lr:.4g}"


def files_sha256(value):
    """The sha256 of each file a comma list names ([] unless it names only files)."""
    paths = [p.strip() for p in value.split(",")] if isinstance(value, str) else []
    return [file_sha256(p) for p in paths] if paths and all(os.path.isfile(p) for p in paths) else []


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path):
    """A JSON file's content, or None where it is missing, cut or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_metrics(path):
    """metrics.jsonl, one record per epoch: the last line of each (a resumed run trains again the epochs after
    its checkpoint and appends them); a line a killed write cut is skipped."""
    epochs = {}
    with open(path) as f:
        for line in f:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(line)
                epochs[record["epoch"]] = record
    return [epochs[e] for e in sorted(epochs)]


def best_head(method, record):
    """The head whose best epoch is saved as best.pt: method.primary_head, else ens (never `any`)."""
    final, primary = record["final"], getattr(method, "primary_head", None)
    return primary if primary in final else "ens" if "ens" in final else next((h for h in final if h != "any"), None)


def same_file(src, dst):
    """dst made a second name of the file src (a copy where the file system has no links), whole or not at all."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(dst + ".tmp")
    try:
        os.link(src, dst + ".tmp")
    except OSError:
        shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def warn_if_lr_unreached(args, settings):
    """A line when the run will not train as its flags say: a warm-up shortened for a short run
    (effective_warmup), or a schedule whose highest lr stays below 90 % of --lr (a cosine decayed by then)."""
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


def format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def top1_line(final):
    """{head: top-1} as the run prints it: `s0 71.20  s1 70.85  ens 73.02`."""
    return "  ".join(f"{h} {a:.2f}" for h, a in final.items())


def seconds_since(t0, device):
    """Seconds since perf_counter() gave t0, once the device has done the work queued on it (CUDA runs ahead)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def place(method, args, settings):
    """The method on the run's device, in its memory layout (channels_last on GPUs); under torchrun with --sync-bn,
    its batch norms take their statistics over the global batch (CUDA only)."""
    method.to(settings.device)
    if args.sync_bn and settings.distributed:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return method.to(memory_format=torch.channels_last) if settings.channels_last else method


def step_module(method, args, settings):
    """What a step calls: under torchrun, one DistributedDataParallel around everything that trains (a step's
    gradients are averaged over the processes in its one backward); compiled with --compile."""
    module = method if not settings.distributed else nn.parallel.DistributedDataParallel(
        method, device_ids=[settings.device.index] if settings.device.type == "cuda" else None,
        gradient_as_bucket_view=True)
    return torch.compile(module) if args.compile else module


def results_record(method, data, record, args, settings, name, saved, images_per_epoch):
    """results.json: the final and best figures, the collapses, the time, the networks' sizes, where and with what
    code it was measured (the CPU's model and the instruction set torch's kernels use, which results move with),
    what resumes changed, and the run's flags (`args`)."""
    import platform
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    elapsed, top5 = record["elapsed"], record.get("final_top5")
    return {"method": name, "final": record["final"], **({"final_top5": top5} if top5 else {}), "best": record["best"],
            "best_epoch": record["best_epoch"], "epochs": record["epoch"], "collapsed": record["collapsed"],
            "train_seconds": elapsed, "images_per_s": args.epochs * images_per_epoch / elapsed if elapsed else None,
            "params": {**{f"s{i}": count_params(s) for i, s in enumerate(getattr(method, "students", []))},
                       "total": count_params(method),
                       "trainable": sum(p.numel() for p in method.parameters() if p.requires_grad)},
            "device": (f"{settings.world_size} x " if settings.distributed else "") + device_name(settings.device),
            "torch": torch.__version__, "torchvision": tv_version(), "num_classes": data.num_classes,
            "machine": {"cpu": cpu, "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", str)(),
                        "gpu": torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else None,
                        "threads": torch.get_num_threads(), "processes": settings.world_size},
            "code": code_version(), "changes": record["changes"], "command": command_line(), "args": saved}


def code_version():
    """The git commit of the code that ran and whether its tracked files differed from it (None for both where git
    or the repository is not there)."""
    import subprocess
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        said = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe", "--always",
                               "--dirty", "--abbrev=40", "--exclude=*"], capture_output=True, text=True, timeout=20)
        if said.returncode == 0:  # the commit, "-dirty" after it where tracked files differ from it
            return {"commit": said.stdout.strip().removesuffix("-dirty"), "modified": "-dirty" in said.stdout}
    return {"commit": None, "modified": None}


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)})"


def tv_version():
    """torchvision's version, without importing it (an import costs seconds)."""
    import importlib.metadata
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version("torchvision")


def exports(method, data=None, args=None) -> dict:
    """What a run deploys: method.export() where the method has one, else every student as s<i>; with `data`,
    each payload also carries what its input needs (data.preprocessing(): normalisation, image size, resizing),
    the class names where known, and the data flags of its test figures (`trained_on`, for evaluate.py)."""
    found = method.export() if hasattr(method, "export") else \
        {f"s{i}": backbone_payload(s) for i, s in enumerate(method.students)}
    trained_on = {k: getattr(args, k, None) for k in ("dataset", "limit_train", "limit_test", "stream", "image_size")}
    return found if data is None else {key: {**payload, "preprocess": data.preprocessing(), "classes": data.classes,
                                             "trained_on": trained_on} for key, payload in found.items()}


# ==================================================================================================
# Checkpoint files: written whole or not at all, their checksums verified when read
# ==================================================================================================
# Plain data only, so that `torch.load(weights_only=True)` reads them. Every record of torch's zip archive carries
# the CRC-32 of its bytes; load_checkpoint checks them (torch.load does not), so a damaged file is refused in one
# sentence instead of loading wrong weights.

def atomic_write(path, write, mode="w"):
    """write(file) into a temporary file renamed over `path` once complete (os.replace): an error, a full disk or
    a signal at any moment leaves the file that was there."""
    try:
        with open(path + ".tmp", mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        fault = e if isinstance(e, OSError) else e.__context__  # torch's zip writer wraps a full disk's OSError
        if isinstance(fault, OSError):
            raise OSError(fault.errno, fault.strerror, path) from None
        raise fault if isinstance(fault, KeyboardInterrupt) else e from None  # a signal inside torch's writer


def write_json(path, obj):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2))


def atomic_save(obj, path):
    """torch.save(obj, path), whole or not at all, with the checksums load_checkpoint verifies."""
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        atomic_write(path, lambda f: torch.save(obj, f), "wb")
    finally:
        torch.serialization.set_crc32_options(crc)


def load_checkpoint(path):
    """A file atomic_save wrote (a checkpoint, an exported network), its checksums verified first. A folder, a
    missing file, a file of another kind or a damaged one: one sentence naming it."""
    import zipfile
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".pt"))
        raise UsageError(f"{path} is a folder; pass one of its files: {', '.join(found)}" if found else
                         f"{path} is a folder with no saved network or checkpoint in it (no .pt file)")
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path} does not exist")
    if read_json(path) is not None:
        raise UsageError(f"{path} is a JSON file (a run's record, such as results.json), not a saved network or "
                         f"checkpoint; pass a .pt file of the run")
    try:
        checked = bad = None
        with contextlib.suppress(zipfile.BadZipFile), zipfile.ZipFile(path) as archive:  # else torch's old format
            checked = any(r.CRC for r in archive.infolist() if r.file_size)  # or written with them switched off
            bad = archive.testzip() if checked else None
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"{path} is not a readable checkpoint ({type(e).__name__}); it may be truncated or corrupt, "
                         f"or another kind of file") from None
    if bad is not None:
        raise UsageError(f"{path} is damaged: its part {bad} no longer matches the checksum written with it (a disk, "
                         f"copy or transfer fault); replace it with a good copy")
    if not checked:
        print(f"note: {path} has no checksums (saved by torch's older format, or with them switched off): loaded "
              f"without checking it", flush=True)
    return payload


def peek_checkpoint(path):
    """A checkpoint's record and flags without reading its tensors (mapped, not loaded or verified); None where
    there is no readable one."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None


# ==================================================================================================
# The progress line and the loss sums
# ==================================================================================================

class Progress:
    """Where the epoch stands (rank 0, not --quiet): on a terminal one line rewritten in place at most every second
    (show(): other news, such as the evaluation); in a log a line at most every 10 % of the epoch and every minute.
    The host's clock decides; the loss is read from the device (a wait) only then. A context: cleared on leaving."""
    TERMINAL_EVERY_S, PLAIN_EVERY_S = 1.0, 60.0

    def __init__(self, on, epoch, epochs, steps, batch):
        self.on, self.terminal, self.epoch, self.epochs, self.steps = on, sys.stdout.isatty(), epoch, epochs, steps
        self.batch, self.start, self.shown_step, self.width = batch, time.perf_counter(), 0, 0
        self.shown_at = self.start
        self.every_s, self.every_steps = (self.TERMINAL_EVERY_S, 1) if self.terminal else \
            (self.PLAIN_EVERY_S, math.ceil(steps / 10))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.width:
            print("\r" + " " * self.width + "\r", end="", flush=True)

    def update(self, done, losses):
        """After `done` steps of the epoch; the epoch's own line follows its last one."""
        now = time.perf_counter()
        if not self.on or done == self.steps or now - self.shown_at < self.every_s or \
                done - self.shown_step < self.every_steps:
            return
        self.shown_at, self.shown_step, per_step = now, done, (now - self.start) / done
        left = per_step * (self.steps - done)
        run_left = left + per_step * self.steps * (self.epochs - self.epoch - 1)  # training only, as the epoch's
        self.show(f"step {done}/{self.steps}  {self.batch / per_step:.0f} img/s  loss {losses.mean_loss(done):.4f}  "
                  f"eta {format_eta(left)}  run eta {format_eta(run_left)}", always=True)

    def show(self, news, always=False):
        """`epoch e/E  news`, rewritten in place on a terminal; elsewhere printed only if `always`."""
        line = f"epoch {self.epoch + 1}/{self.epochs}  {news}"
        if self.on and self.terminal:
            print("\r" + line.ljust(self.width), end="", flush=True)
            self.width = max(self.width, len(line))
        elif self.on and always:
            print(line, flush=True)


class LossSums:
    """The loss and its parts summed over an epoch's steps on the device, and per part the first step where it was
    not finite; checked every `check_every` steps by every process together (the earliest bad step of any), so
    that they all stop at the same step."""

    def __init__(self, steps, world_size=1, check_every=50):
        self.steps, self.world_size, self.check_every, self.sums = steps, world_size, check_every, None

    def add(self, step, loss, parts):
        values = torch.stack([loss.detach().float()] + [p.detach().float() for p in parts.values()])
        if self.sums is None:
            self.names, self.sums, self.bad = ["loss"] + list(parts), torch.zeros_like(values), \
                torch.full_like(values, self.steps)
        self.bad = torch.where(torch.isfinite(values), self.bad, self.bad.clamp(max=step))
        self.sums += values
        if (step + 1) % self.check_every == 0 or step + 1 == self.steps:
            bad = self.bad.clone()
            if self.world_size > 1:
                dist.all_reduce(bad, dist.ReduceOp.MIN)
            first = int(bad.min())
            if first < self.steps:  # NonFinite: the first bad step (from 1) and a part that went bad there
                named = [n for n, b in zip(self.names, bad.tolist()) if b == first]
                raise NonFinite(next((n for n in named if n != "loss"), "loss"), first + 1)

    def mean_loss(self, steps_done):
        """The mean loss of the steps done so far, on this process's share (a wait for the device)."""
        return float(self.sums[0]) / steps_done

    def totals(self):
        """The sums over the epoch's steps, each the mean over the processes' shares (what every process logs)."""
        if self.world_size > 1:
            dist.all_reduce(self.sums)
            self.sums /= self.world_size
        return self.sums


# ==================================================================================================
# Several processes: torchrun
# ==================================================================================================
# `torchrun --nproc_per_node=N script.py ...` starts N copies of a script (RANK, LOCAL_RANK, WORLD_SIZE in the
# environment). Each holds the whole method, wrapped once in DistributedDataParallel. --batch-size stays the global
# batch: process r trains on images r, r + N, ... of every batch, with the augmentation one process would draw, so
# the order, every generator and the checkpoint are the same for any N and a run resumes on another N. What N
# changes: batch-norm statistics come from each share (--sync-bn: the global batch, on GPUs), and so does what a
# method computes per batch (KDCL linear's weights). Rank 0 evaluates and writes; the others then take its state.

def launch(nproc, argv):
    """--nproc-per-node N: this command in N processes on this machine, started by torchrun's own launcher; the
    processes say how the run ended (rank 0, one sentence), so an interrupt or a failure ends them all without
    torchrun's report, with the exit status of the first that ended so."""
    import logging
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    logging.disable(logging.CRITICAL)  # this process's (the launcher's) log lines: the processes say what matters
    try:
        torchrun.run(torchrun.get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}",
                                                             sys.argv[0], *argv]))
    except SignalException as e:
        sys.exit(128 + int(e.sigval))
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        sys.exit(code if code > 0 else 128 - code)


def start_processes(settings):
    """Join torchrun's process group (NCCL on GPUs, gloo on CPU), unless the caller already has; from here only
    rank 0 prints. True when this call made the group (and its caller ends it)."""
    if not settings.distributed or dist.is_initialized():
        return False
    if settings.device.type == "cuda":
        torch.cuda.set_device(settings.device)
    dist.init_process_group("nccl" if settings.device.type == "cuda" else "gloo")
    if settings.rank != 0:
        sys.stdout = open(os.devnull, "w")
    return True


def agree(settings, work):
    """work() on every process; if it failed on any, every process stops with the failures' sentences, said once
    by rank 0 (a folder refused on rank 0, data missing on one node: no process is left waiting)."""
    try:
        result, failure = work(), None
    except UsageError as e:
        result, failure = None, str(e)
    if settings.world_size > 1:
        failures = [None] * settings.world_size
        dist.all_gather_object(failures, failure)
        said = {}
        for rank, f in enumerate(failures):
            if f is not None:
                said.setdefault(f, []).append(rank)
        if said:
            plain = len(said) == 1 and next(iter(said.values())) in ([0], list(range(settings.world_size)))
            raise SharedError("; ".join(f if plain else f"{f} (rank {', '.join(map(str, ranks))})"
                                        for f, ranks in said.items()))  # rank 0's alone, or every one's: no ranks
    if failure is not None:
        raise UsageError(failure)
    return result


def share_state(method, settings):
    """Every process takes rank 0's parameters and buffers (what epoch_end changed there: KDCL's ensemble
    weights; batch-norm statistics, which each process gathers from its own share)."""
    if settings.world_size > 1:
        for t in [*method.parameters(), *method.buffers()]:
            dist.broadcast(t.data, 0)


def lost_contact(error):
    """Whether an error raised by a collective means that another process is gone."""
    return isinstance(error, dist.DistError) or isinstance(error, RuntimeError) and any(s in str(error) for s in (
        "Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted"))


# ==================================================================================================
# Flags: the shared ones, --recipe, --baseline, --resume, their checks
# ==================================================================================================

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence, no usage dump; under torchrun rank 0 says it for every process
        self.exit(2, f"error: {message} (see --help)\n" if os.environ.get("RANK", "0") == "0" else None)


def parse_flags(name, add_arguments=None, argv=None, doc=None):
    """A script's flags as given (the shared ones, then its own), --recipe's values as their defaults, with --resume
    the run's value (its args.json) of every flag not given, checked; with --baseline vanilla's alone. Returns
    (args, the recipe's record); a mistake ends in one sentence (rank 0's under torchrun) and exit status 2."""
    parser = make_parser(doc or __doc__)
    if add_arguments is not None:
        add_arguments(parser)  # a method file's add_arguments also sets parser.recipes, its RECIPES
    try:
        recipe = apply_recipe(parser, getattr(parser, "recipes", None) or {}, argv)
        defaults, unset = parser.parse_args([]), object()
        parsed = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(defaults)}))
        given = {k for k, v in vars(parsed).items() if v is not unset} | set(recipe_values(recipe))
        args = argparse.Namespace(**{k: getattr(defaults, k) if v is unset else v for k, v in vars(parsed).items()})
        if args.baseline:  # the students alone, with the script's recipe and shared flags (not --T, not its own)
            shared = shared_flags()
            args = argparse.Namespace(**{k: None if k == "T" else v for k, v in vars(args).items() if k in shared})
            recipe, name = baseline_recipe(recipe), "vanilla"
        args.out_dir = args.out_dir or default_out_dir(args, name)
        if args.resume:
            args = resume_flags(args, given, name)
        check_args(args)
        return args, recipe_record(args, recipe)
    except BaseException as e:
        stop(e)  # nothing written yet
        raise


def resume_flags(args, given, name):
    """--resume: the run's value (args.json) of every flag not `given`, but this machine's; one sentence for a
    run of another method, or naming each flag given otherwise (refuse_other_flags)."""
    saved = read_json(os.path.join(args.out_dir, "args.json"))
    if not isinstance(saved, dict):
        raise UsageError(f"--resume: {args.out_dir} holds no run to continue (no readable args.json)")
    method = saved.get("method") or (peek_checkpoint(os.path.join(args.out_dir, "last.pt")) or {}).get("method", name)
    if method != name:
        hint = " (a --baseline run: add --baseline)" if method == "vanilla" and saved.get("baseline") else ""
        raise UsageError(f"--resume: {args.out_dir} holds a {method} run, not a {name} one{hint}")
    taken = {k: saved[k] for k in vars(args) if k in saved and k not in given | {"out_dir", "resume", *THIS_MACHINE}}
    if taken.get("tensorboard"):
        taken["tensorboard"] = tensorboard_dir(taken["tensorboard"])  # the package may be missing here
    args = argparse.Namespace(**{**vars(args), **taken})
    refuse_other_flags(args.out_dir, saved, vars(args))
    return args


def shared_flags():
    """The dests of the shared flags (those every script has)."""
    return set(vars(make_parser().parse_args([])))


# A recipe (a method file's RECIPES[name]) is {source: {flag dest: value}}: every value stated once, beside where
# it comes from (the paper's section or table, the official code's file, or this project where both are silent).

def recipe_values(recipe):
    return {dest: value for values in recipe.values() for dest, value in values.items()}


def baseline_recipe(recipe):
    """The part of a method's recipe the vanilla baseline trains with (--baseline): its shared flags (training
    recipe, architectures, data), without the temperature."""
    shared = shared_flags() - {"T"}
    return {src: kept for src, values in recipe.items() if (kept := {k: v for k, v in values.items() if k in shared})}


def recipe_flags(values):
    """{flag dest: value} as the command-line flags it stands for, e.g. ['--epochs 300', '--no-nesterov']."""
    shown = {k: f"{v:g}" if isinstance(v, float) else v for k, v in values.items()}
    return [f"--{k}" if v is True else f"--no-{k}" if v is False else f"--{k} {v}"
            for k, v in ((k.replace("_", "-"), v) for k, v in shown.items())]


def recipe_record(args, recipe):
    """What args.json and results.json record of --recipe: its values as flags, those the command gave otherwise,
    and where each value comes from."""
    values = recipe_values(recipe)
    flags = recipe_flags(values)
    return {"recipe_flags": flags,
            "recipe_overridden": [f for (dest, v), f in zip(values.items(), flags) if getattr(args, dest) != v],
            "recipe_sources": [f"{f}: {source}" for source, vals in recipe.items() for f in recipe_flags(vals)]}


def apply_recipe(parser, recipes, argv):
    """--recipe NAME: its values become the parser's defaults (so --help shows them and a flag given explicitly
    still wins); --help lists every recipe, its values under their sources. Returns the recipe ({} without)."""
    lines = ["recipes (--recipe NAME sets these defaults; a flag given explicitly still wins), each value under "
             "its source:"]
    for name, recipe in recipes.items():
        lines.append(f"  {name}")
        for source, values in recipe.items():
            lines.append(f"    {source}:")
            for flag in recipe_flags(values):
                lines += [" " * 6] if len(lines[-1]) + len(flag) > 110 else []
                lines[-1] += " " + flag
    parser.epilog = "\n".join(line.rstrip() for line in lines) if recipes else None
    recipe_flag = next(a for a in parser._actions if a.dest == "recipe")  # its choices, not "(default: None)"
    recipe_flag.help += (f"; choices: {', '.join(recipes)}" if recipes else "; this script has none") + "%(default).0s"
    pre = Parser(add_help=False)  # --recipe is read before --help is printed, so that help shows its defaults
    pre.add_argument("--recipe", default=None)
    name = pre.parse_known_args(argv)[0].recipe
    if name is not None and name not in recipes:
        raise UsageError(f"unknown recipe '{name}'; " + (f"choose from {', '.join(recipes)}" if recipes else
                         "this script has none (a paper's baseline: <method>.py --recipe paper --baseline)"))
    parser.set_defaults(**recipe_values(recipes.get(name, {})))
    return recipes.get(name, {})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults beside every flag, and the recipes (the epilog) one per line."""


def make_parser(doc=None):
    p = Parser(description=(doc or "").split("\n\n")[0], formatter_class=HelpFormatter)
    a = p.add_argument  # `%(default).0s` prints nothing: it keeps the formatter from adding "(default: None)"
    a("--recipe", default=None, metavar="NAME",
      help="a paper's setting (`paper`: CIFAR; `paper-imagenet`) as the defaults shown here, each value's source "
           "listed at the end. No lr warm-up where the paper has none (--lr-warmup 0), though students that teach "
           "each other can collapse without one: add --lr-warmup 5")
    a("--baseline", action="store_true", help="train vanilla (the students alone, on the labels) with this script's "
      "--recipe and shared flags, not this script's method")
    a("--arch", default="resnet32", help="backbone of every student, or a comma list, one per student")
    a("--students", type=int, default=2, help="number of students (networks trained together)")
    a("--dataset", default="cifar100", choices=DATASETS, help="folder, cinic10: DIR/train/<class>/*, "
      "DIR/test/<class>/*; imagenet: DIR/train, DIR/val, streamed; synthetic needs no files")
    a("--data-dir", default="./data", help="the data set's folder (cifar10/100, mnist, stl10: downloaded there); "
      "folder, cinic10, imagenet: the folder or a .tar(.gz) of it")
    a("--stream", action="store_true", help="folder, cinic10: stream the images from disk, as imagenet")
    a("--image-size", type=int, default=None,
      help="streamed data: the crop the networks see, in pixels (default: 224)%(default).0s")
    a("--augment", default="crop+flip", choices=["none", "crop", "crop+flip"], help="training augmentation: a random "
      "crop (in memory: of the image padded by 1/8 of its size; streamed: RandomResizedCrop), a horizontal flip "
      "(never on MNIST)")
    a("--pad-mode", default="zeros", choices=["zeros", "reflect"],
      help="in memory: the padding before the random crop, zeros or the image's mirror (torchvision's reflect)")
    a("--epochs", type=int, default=200, help="training epochs")
    a("--batch-size", type=int, default=128, help="images per step (each student sees all of them)")
    a("--lr", type=float, default=0.1, help="initial SGD learning rate")
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--nesterov", action=argparse.BooleanOptionalAction, default=True, help="Nesterov momentum")
    a("--wd", type=float, default=5e-4, help="weight decay")
    a("--schedule", default="multistep", choices=["multistep", "cosine"], help="learning-rate schedule")
    a("--milestones", default="0.5,0.75", help="multistep: epochs where lr *= gamma (below 1: fractions of --epochs)")
    a("--gamma", type=float, default=0.1, help="multistep decay factor")
    a("--lr-warmup", type=float, default=5.0, help="epochs of linear per-step lr warm-up from 0, every optimizer's "
      "(0: none); at most half the epochs before the first decay, said in one line")
    a("--lr-warmup-start", type=float, default=0.0, help="the fraction of --lr the warm-up starts from")
    a("--T", type=float, default=None, help="distillation temperature (each method sets its paper's default)")
    a("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    a("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a("--amp", default="auto", choices=["auto", "bf16", "off"], help="bf16 autocast (auto: on for CUDA)")
    a("--compile", action="store_true", help="torch.compile the training step")
    a("--quiet", action="store_true", help="only the per-epoch line: no progress line inside an epoch")
    a("--tensorboard", type=tensorboard_dir, default=None, metavar="DIR",
      help="also write metrics.jsonl's scalars for TensorBoard into DIR (needs the tensorboard package)")
    a("--nproc-per-node", type=int, default=1, metavar="N", help="train in N processes on this machine (N GPUs; "
      "torchrun's launcher, its interrupts and failures said in one sentence); several machines: torchrun")
    a("--sync-bn", action="store_true", help="under torchrun on GPUs: batch norm over the global batch")
    a("--workers", type=int, default=max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))),
      help="threads decoding a folder once (in memory), DataLoader processes (streamed), per torchrun process")
    a("--out-dir", default=None, help="output folder (default: runs/<method>_<arch>_<dataset>_seed<seed>, then "
      "_limit<N>, _stream, _<S>px where given; folder data: folder-<its name>)%(default).0s")
    a("--resume", action="store_true", help="continue the run in --out-dir with its value of every flag not given "
      "(only --epochs, --data-dir and files of the same bytes moved, --quiet, --tensorboard and this machine's "
      "--device, --amp, --compile, --workers, --nproc-per-node may differ; a change is recorded); a finished run "
      "gets what it lacks")
    a("--limit-train", type=int, default=0, help="class-balanced subset of N training images (0: all)")
    a("--limit-test", type=int, default=0, help="class-balanced subset of N test images (0: all)")
    return p


def tensorboard_dir(path):
    """--tensorboard's value: the folder, or None (said in one line) where the tensorboard package is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
        return path
    except ImportError:
        if os.environ.get("RANK", "0") == "0":
            print("warning: --tensorboard needs the tensorboard package (pip install tensorboard); this run writes "
                  "metrics.jsonl only", file=sys.stderr, flush=True)


def check_args(args):
    """One sentence for a flag value the run cannot use: alone, with the other flags, on this machine or under this
    torchrun launch (what --out-dir holds is checked when the run takes it: RunFolder.claim)."""
    archs, world = student_archs(args), int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    torchrun = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    with contextlib.suppress(ValueError):
        milestones = milestone_epochs(args)
    for fine, sentence in (
            (not os.path.isfile(args.out_dir or ""), f"--out-dir {args.out_dir} is a file, not a folder; pass another"),
            (args.students >= 1, f"--students must be at least 1, got {args.students}"),
            (len(archs) == args.students, f"--arch lists {len(archs)} architectures but --students is "
                                          f"{args.students}; give one name, or one per student"),
            *((arch in ARCHS, f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}") for arch in archs),
            (args.epochs >= 1, "--epochs must be at least 1"),
            (args.batch_size >= 2, "--batch-size must be at least 2 (batch normalisation needs two samples)"),
            (0 < args.lr < math.inf, f"--lr must be a positive number, got {args.lr:g}"),
            (0 < args.gamma < math.inf, f"--gamma must be a positive number, got {args.gamma:g}"),
            (0 <= args.wd < math.inf, f"--wd must be a non-negative number, got {args.wd:g}"),
            (0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum:g}"),
            (0 <= args.lr_warmup < math.inf, f"--lr-warmup must be a non-negative number of epochs, got "
                                             f"{args.lr_warmup}"),
            (0 <= args.lr_warmup_start <= 1, f"--lr-warmup-start must be a fraction of --lr in [0, 1], got "
                                             f"{args.lr_warmup_start}"),
            (not args.nesterov or args.momentum > 0, "Nesterov momentum needs --momentum above 0; pass --no-nesterov "
                                                     "for plain SGD"),
            (args.T is None or 0 < args.T < math.inf, f"--T must be a positive number, got {args.T}"),
            (min(args.limit_train, args.limit_test) >= 0, "--limit-train and --limit-test must be non-negative"),
            (not args.stream or args.dataset in ("folder", "cinic10"), f"--stream is for folder data sets (folder, "
             f"cinic10); {args.dataset} {'is always streamed' if args.dataset == 'imagenet' else 'is held in memory'}"),
            (args.image_size is None or args.image_size >= 16, f"--image-size must be at least 16 (pixels), got "
                                                               f"{args.image_size}"),
            (args.workers >= 0, f"--workers must be 0 or more, got {args.workers}"),
            ("milestones" in locals(), f"--milestones must be a comma list of numbers, got '{args.milestones}'"),
            (device == "cpu" or device.startswith("cuda"), f"--device must be auto, cpu, cuda or cuda:N, got "
                                                           f"'{device}'"),
            (not device.startswith("cuda") or torch.cuda.is_available(), f"--device {device} was asked for but this "
                                                                         f"machine has no CUDA device"),
            (not torchrun or device in ("cpu", "cuda", f"cuda:{os.environ.get('LOCAL_RANK', '0')}"), f"under "
             f"torchrun each process takes the GPU of its LOCAL_RANK: pass --device cuda (or auto), not {device}"),
            (not (torchrun and args.sync_bn and device == "cpu"), "--sync-bn needs GPUs (torch's SyncBatchNorm does "
                                                                  "not run on CPU)"),
            (not torchrun or (args.batch_size % world == 0 and args.batch_size // world >= 2), f"--batch-size "
             f"{args.batch_size} is the global batch: it must split into equal shares of at least 2 images over the "
             f"{world} processes")):
        if not fine:
            raise UsageError(sentence)
    return args


def milestone_epochs(args) -> list:
    """--milestones in epochs: values below 1 are fractions of --epochs (ValueError for a value that is no
    number). A fraction of a very short run may round to epoch 0: it is dropped."""
    epochs = [round(m * args.epochs) if m < 1 else int(m)
              for m in (float(m) for m in args.milestones.split(",") if m.strip())]
    return [e for e in epochs if e >= 1]


def first_decay_epoch(args) -> int:
    """The epoch at which the schedule first lowers the lr: the first milestone (multistep), else the run's end."""
    return min([*milestone_epochs(args), args.epochs]) if args.schedule == "multistep" else args.epochs


def effective_warmup(args) -> float:
    """The warm-up a run gets, in epochs: --lr-warmup, but at most half of the epochs before the lr first decays,
    so that a run trains at --lr before its first decay (the README's 40-epoch regime, milestones 20 and 30,
    keeps its 5 epochs; a 2-epoch run, first decay after epoch 1, warms up over half an epoch)."""
    return min(args.lr_warmup, first_decay_epoch(args) / 2)


def default_out_dir(args, name):
    """runs/<method>_<arch>_<dataset>_seed<seed>, then whatever else changes the training images: the folder's name
    for --dataset folder, _limit<N> (--limit-train), _stream, _<S>px (--image-size)."""
    dataset = args.dataset
    if args.dataset == "folder":
        dataset += "-" + (os.path.basename(os.path.abspath(args.data_dir)).split(".tar")[0] or "root")
    run = f"{name}_{args.arch.replace(',', '+')}_{dataset}_seed{args.seed}"
    run += f"_limit{args.limit_train}" * bool(args.limit_train) + "_stream" * bool(args.stream)
    return os.path.join("runs", run + f"_{args.image_size}px" * bool(args.image_size))


# ==================================================================================================
# torchvision's backbones, any classifier as a student, a deployable student as plain data
# ==================================================================================================

TV_IMAGENET = ("resnet18", "resnet34", "resnet50", "mobilenetv2", "shufflenetv2")  # native shape from 64 px


def tv_backbone(arch, num_classes, small=True):
    """torchvision's network as a Backbone whose stages end where the resolution halves next. small (32 px): a 3x3
    stride-1 stem, no max-pool (MobileNetV2: its first stride-2 block at stride 1 too); else its ImageNet shape.
    VGG-16 and DenseNet-121 are the same at every size."""
    tv = import_torchvision().models
    if arch.startswith("resnet"):
        net = getattr(tv, arch)(num_classes=num_classes)
        if small:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, *([] if small else [net.maxpool]))
        return Backbone([nn.Sequential(stem, net.layer1), net.layer2, net.layer3, net.layer4],
                        nn.Sequential(net.avgpool, nn.Flatten(), net.fc), arch, num_classes)
    if arch == "mobilenetv2":
        net = tv.mobilenet_v2(num_classes=num_classes)
        f = net.features  # stages at 32 px: 32x32 (24 ch), 16x16 (32), 8x8 (96), 4x4 (1280); at 224: 56 .. 7
        if small:
            f[0][0].stride = f[2].conv[1][0].stride = (1, 1)
        return Backbone([f[0:4], f[4:7], f[7:14], f[14:]],
                        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier), arch, num_classes)
    if arch == "shufflenetv2":
        net = tv.shufflenet_v2_x1_0(num_classes=num_classes)
        if small:
            net.conv1[0] = nn.Conv2d(3, 24, 3, 1, 1, bias=False)
        first = nn.Sequential(net.conv1, net.stage2) if small else nn.Sequential(net.conv1, net.maxpool, net.stage2)
        return Backbone([first, net.stage3, nn.Sequential(net.stage4, net.conv5)], pool_fc(1024, num_classes),
                        arch, num_classes)
    if arch == "vgg16":
        f = list(tv.vgg16_bn().features)
        pools = [i for i, m in enumerate(f) if isinstance(m, nn.MaxPool2d)]
        bounds = [0] + pools[:4] + [len(f)]  # stages end before each of the first four max-pools
        return Backbone([nn.Sequential(*f[a:b]) for a, b in zip(bounds[:-1], bounds[1:])], pool_fc(512, num_classes),
                        arch, num_classes)
    net = tv.densenet121(num_classes=num_classes)  # a stage ends after each dense block
    f = list(net.features)  # conv0 norm0 relu0 pool0 block1 trans1 block2 trans2 block3 trans3 block4 norm5
    return Backbone([nn.Sequential(*f[0:5]), nn.Sequential(*f[5:7]), nn.Sequential(*f[7:9]),
                     nn.Sequential(*f[9:], nn.ReLU(inplace=True))],
                    nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier), arch, num_classes)


def import_torchvision():
    """torchvision, or one sentence where it does not work with this torch (pip can pair a torch with a
    torchvision built for another when an index is unreachable)."""
    try:
        import torchvision
        import torchvision.models.feature_extraction  # noqa: F401
        return torchvision
    except (ImportError, RuntimeError, AttributeError) as e:
        raise UsageError(f"torchvision {tv_version()} does not work with torch {torch.__version__} ("
                         f"{str(e).splitlines()[0][:100]}); install a matching pair, e.g. pip install torch==2.14.1 "
                         f"torchvision==0.29.1 (requirements.txt lists the tested ones)") from None


def backbone_payload(model: nn.Module) -> dict:
    """A deployable student as plain data (every method file's student_payload writes the same): a zoo backbone's
    (one with .arch) loads with load_backbone; any other student's weights with its own load_state_dict."""
    payload = {"kind": "student", "module": type(model).__name__,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if hasattr(model, "arch"):
        payload.update(kind="backbone", arch=model.arch, num_classes=model.num_classes,
                       image_size=getattr(model, "image_size", 32))
    return payload


def load_backbone(path: str, arch: str = None, num_classes: int = None) -> Backbone:
    """A network exported by a run (backbone_payload), optionally of this architecture and class count, with
    `preprocess` (how its run prepared an image: preprocess_image) and `classes` (their names) where it has them."""
    payload = load_checkpoint(path)
    kind = payload.get("kind") if isinstance(payload, dict) else None
    what = f"a {payload['method']} run's checkpoint" if isinstance(payload, dict) and "method" in payload else \
        "no exported network"
    if kind != "backbone":
        raise UsageError(f"{path} holds the weights of a {payload.get('module')}, not of a zoo backbone; load them "
                         f"into that model with model.load_state_dict(torch.load(path, weights_only=True)"
                         f"['state_dict'])" if kind == "student" else f"{path} is {what} (it has no 'kind: backbone' "
                         f"entry); pass a network a run exported, such as OUT/s0.pt")
    if arch is not None and payload["arch"] != arch:
        raise UsageError(f"{path} holds a {payload['arch']}, but {arch} was asked for")
    if num_classes is not None and payload["num_classes"] != num_classes:
        raise UsageError(f"{path} was trained for {payload['num_classes']} classes, but the data has {num_classes}")
    model = build_model(payload["arch"], payload["num_classes"], payload.get("image_size", 32))
    model.load_state_dict(payload["state_dict"])
    model.preprocess, model.classes = payload.get("preprocess"), payload.get("classes")
    return model


class Student(nn.Module):
    """A classifier made a student: forward(x) -> (logits, [the outputs of the graph nodes `stage_nodes`]),
    picked out of its traced graph by torchvision's feature extraction (the parameters stay the model's)."""

    def __init__(self, model, stage_nodes):
        super().__init__()
        fx = import_torchvision().models.feature_extraction
        logits_node = fx.get_graph_node_names(model)[1][-1]  # the eval graph's last node
        self.stage_nodes = list(stage_nodes)
        self.body = fx.create_feature_extractor(model, {**{n: n for n in self.stage_nodes}, logits_node: "logits"})

    def forward(self, x):
        out = self.body(x)
        return out["logits"], [out[n] for n in self.stage_nodes]


@torch.no_grad()
def as_student(model: nn.Module, stage_nodes=None, image_size=(32, 32)) -> Student:
    """Any torchvision classifier (or other FX-traceable one) as a student for every method here. `stage_nodes`:
    graph node names (torchvision's get_graph_node_names lists them); by default, of the model's direct children
    (of `model.features` where it has that), the last one at each spatial size, global pools left out (for a
    ResNet: the stem, layer1..layer4)."""
    if stage_nodes is None:
        parent, prefix = (model.features, "features.") if isinstance(getattr(model, "features", None),
                                                                     nn.Sequential) else (model, "")
        last = {}  # spatial size -> the last child that produced a 4-D output of that size (in forward order)
        hooks = [m.register_forward_hook(lambda m, i, out, name=name: last.__setitem__(tuple(out.shape[-2:]), name)
                                         if torch.is_tensor(out) and out.dim() == 4 else None)
                 for name, m in parent.named_children() if not isinstance(m, (nn.AdaptiveAvgPool2d,
                                                                              nn.AdaptiveMaxPool2d))]
        mode, p = model.training, next(model.parameters())
        try:
            model.eval()(torch.zeros(1, 3, *image_size, device=p.device, dtype=p.dtype))
        finally:
            model.train(mode)
            for h in hooks:
                h.remove()
        stage_nodes = [prefix + name for name in last.values()]
    if not stage_nodes:
        raise UsageError(f"no stage outputs found in {type(model).__name__}; pass stage_nodes=[...] by name")
    return Student(model, stage_nodes)


# ==================================================================================================
# The other data sets: MNIST, STL-10, image folders (in memory, decoded once and cached), streamed (ImageNet)
# ==================================================================================================

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CINIC_STATS = ((0.4789, 0.4723, 0.4305), (0.2421, 0.2383, 0.2587))


def load_other(args):
    """The in-memory data sets beside CIFAR and synthetic: ((train_x, train_y, test_x, test_y, class count, class
    names), MNIST's border, (mean, std) or (None, None): the training images' own)."""
    if args.dataset == "mnist":  # 28x28 grey digits as 3-channel 32x32 images: 2 px of black border
        sets = [torchvision_set("MNIST", args.data_dir, train=train) for train in (True, False)]
        sets = [t for ds in sets for t in (F.pad(ds.data, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1).contiguous(),
                                           torch.as_tensor(ds.targets, dtype=torch.int64))]
        return (*sets, 10, [str(digit) for digit in range(10)]), 2, (None, None)
    if args.dataset == "stl10":  # the labelled 96x96 images (5,000 train, 8,000 test), not the unlabelled split
        sets = [torchvision_set("STL10", args.data_dir, split=split) for split in ("train", "test")]
        sets = [t for ds in sets for t in (torch.from_numpy(ds.data), torch.as_tensor(ds.labels, dtype=torch.int64))]
        return (*sets, 10, None), 0, (None, None)
    return load_folder(image_folder(args.data_dir), args.workers), 0, \
        CINIC_STATS if args.dataset == "cinic10" else (None, None)


def torchvision_set(name, data_dir, **kw):
    """torchvision's data set `name` from data_dir, downloaded where missing (20 s socket timeout); offline, one
    sentence saying what to put there."""
    import socket
    if os.path.isfile(data_dir):
        raise UsageError(f"--data-dir {data_dir} is a file, not a folder; pass the folder that holds {name}")
    cls = getattr(import_torchvision().datasets, name)
    try:
        return cls(data_dir, download=False, **kw)
    except RuntimeError:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            return cls(data_dir, download=True, **kw)
        except Exception as e:
            raise UsageError(f"{name} is not in {data_dir} and could not be downloaded ({type(e).__name__}); put "
                             f"torchvision's {name} files there, or pass --dataset folder --data-dir DIR with an "
                             f"ImageFolder copy (DIR/train/<class>/*, DIR/test/<class>/*)") from None
        finally:
            socket.setdefaulttimeout(old)


def image_folder(path):
    """--data-dir of an image folder data set: the folder, or a .tar(.gz) of it, extracted once into
    ~/.cache/okd/<name>-<its sha256> (a tarball that changes gets a folder of its own)."""
    import tarfile
    if os.path.isdir(path):
        return path
    if not os.path.isfile(path) or not tarfile.is_tarfile(path):
        raise UsageError(f"--data-dir {path} " + ("is a file but not a .tar(.gz) of an image folder; pass the folder "
                         "or its tarball" if os.path.exists(path) else "does not exist"))
    folder = os.path.join(os.path.expanduser("~/.cache/okd"), os.path.basename(path).split(".tar")[0] + "-" +
                          file_sha256(path)[:16])
    if not os.path.isdir(folder):
        print(f"extracting {path} into {folder} (once)", flush=True)
        shutil.rmtree(folder + ".tmp", ignore_errors=True)
        with tarfile.open(path) as tar:
            tar.extractall(folder + ".tmp", filter="data")
        inner = os.listdir(folder + ".tmp")  # the tarball of a folder, or of what it holds
        os.replace(os.path.join(folder + ".tmp", inner[0]) if inner != ["train"] and len(inner) == 1 else
                   folder + ".tmp", folder)
    return folder


def split_folders(data_dir, tests=("test", "val")):
    """DIR/train and DIR/test (or DIR/val), ImageFolder layouts of the same classes, none empty: (classes, train
    files, test files), a file as (path, class index); one sentence for anything else."""
    test = next((n for n in tests if os.path.isdir(os.path.join(data_dir, n))), None)
    if not os.path.isdir(os.path.join(data_dir, "train")) or test is None:
        raise UsageError(f"--data-dir {data_dir} must hold train/<class>/* and {'/'.join(tests)}/<class>/*" +
                         " (ImageNet's validation images sorted into class folders)" * (tests == ("val",)))
    listed = []
    for split in ("train", test):
        root = os.path.join(data_dir, split)
        try:
            classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
            files = [[(os.path.join(root, c, e.name), i) for e in sorted(os.scandir(os.path.join(root, c)),
                      key=lambda e: e.name) if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.is_dir()]
                     for i, c in enumerate(classes)]
        except OSError as e:
            raise UsageError(f"cannot list the folder {e.filename} ({os_reason(e)})") from None
        empty = [c for c, found in zip(classes, files) if not found]
        if not classes or empty:
            raise UsageError(f"{root} holds no class folders (expected {root}/<class>/<image>)" if not classes else
                             f"{root} holds no images in its class folders (names ending "
                             f"{', '.join(IMAGE_EXTENSIONS)})" if empty == classes else
                             f"the class folder{'s' * (len(empty) > 1)} {', '.join(empty)} in {root} hold"
                             f"{'s' * (len(empty) == 1)} no images; add images or remove the empty folder"
                             f"{'s' * (len(empty) > 1)}")
        listed.append((classes, [f for found in files for f in found]))
    if listed[0][0] != listed[1][0]:
        only = [f"only {d} has {', '.join(sorted(set(a) - set(b)))}" for d, a, b in
                (("train", listed[0][0], listed[1][0]), (test, listed[1][0], listed[0][0])) if set(a) - set(b)]
        raise UsageError(f"{data_dir}/train and {data_dir}/{test} must have the same class folders, but "
                         f"{' and '.join(only)}")
    return listed[0][0], listed[0][1], listed[1][1]


def files_identity(root, train_files, test_files, classes, workers=4):
    """An image folder data set's identity: class and image counts, and a fingerprint of every file's name, label
    and bytes (an image edited in place, whatever its size or modification time, changes it). A file's bytes are
    read once: ~/.cache/okd keeps its hash beside what stat() says of it (a write changes its change time)."""
    from concurrent.futures import ThreadPoolExecutor
    memo_path = os.path.join(os.path.expanduser("~/.cache/okd"), hashlib.sha256(os.path.abspath(root).encode())
                             .hexdigest()[:16] + ".files.json")
    memo, files = read_json(memo_path) or {}, train_files + test_files
    names = [os.path.relpath(path, root) for path, _ in files]
    keys = [[st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] for st in (os.stat(p) for p, _ in files)]
    stale = [i for i, (name, key) in enumerate(zip(names, keys)) if memo.get(name, [None])[0] != key]

    def sha256(i):
        with open(files[i][0], "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    with ThreadPoolExecutor(max(1, workers)) as pool:
        memo.update({names[i]: [keys[i], digest] for i, digest in zip(stale, pool.map(sha256, stale))})
    if stale:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(memo_path), exist_ok=True)
            atomic_write(memo_path, lambda f: json.dump(memo, f))
    lines = "".join(f"{name}\t{label}\t{memo[name][1]}\n" for name, (_, label) in zip(names, files))
    return {"classes": len(classes), "train_images": len(train_files), "test_images": len(test_files),
            "fingerprint": hashlib.sha256(lines.encode()).hexdigest()[:16]}


def load_folder(data_dir, workers):
    """An image folder data set in memory, decoded once and cached as DIR/.okd-cache.pt (or in ~/.cache/okd where
    DIR is read-only), the cache used while its record of the files' bytes is theirs, else decoded again (a line).
    Returns the images and labels, the class count and names."""
    classes, train_files, test_files = split_folders(data_dir)
    identity = files_identity(data_dir, train_files, test_files, classes, workers)
    caches = [os.path.join(data_dir, ".okd-cache.pt"), os.path.join(
        os.path.expanduser("~/.cache/okd"), os.path.abspath(data_dir).strip("/").replace("/", "_") + ".pt")]
    for path in (p for p in caches if os.path.exists(p)):
        try:
            c = load_checkpoint(path)
        except UsageError as e:  # damaged or unreadable: what is wrong with it, not what to do about it
            print(f"note: {str(e).split('; ')[0]}; decoding the images again", flush=True)
            continue
        if c.get("identity") == identity:
            return c["train_x"], c["train_y"], c["test_x"], c["test_y"], len(classes), classes
        print(f"note: the images in {data_dir} changed since {path} was decoded from them; decoding them again",
              flush=True)
    (train_x, train_y), (test_x, test_y) = [decode_images(files, workers) for files in (train_files, test_files)]
    for path in caches:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_save(dict(identity=identity, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y), path)
            break
    return train_x, train_y, test_x, test_y, len(classes), classes


def decode_images(files, workers, size=32):
    """The (path, class index) list decoded: RGB size x size uint8 images (PIL's bilinear resize) and labels."""
    from concurrent.futures import ThreadPoolExecutor
    from PIL import Image

    def decode(path):
        img = open_rgb(path)
        return np.asarray(img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        x = np.stack(list(pool.map(decode, [f for f, _ in files], chunksize=256)))
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.tensor([c for _, c in files])


def open_rgb(path):
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:
        raise UsageError(f"cannot read image {path} ({type(e).__name__})") from None


def tensors_identity(num_classes, train_x, train_y, test_x, test_y):
    """In-memory data's identity (what a resumed run checks): class and image counts and a hash of the images' and
    labels' bytes (a changed, inverted or reordered image changes it; about 0.3 s for CIFAR on a CPU core)."""
    digest = hashlib.sha256()
    for t in (train_x, train_y, test_x, test_y):
        t = t.cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().data)
    return {"classes": num_classes, "train_images": len(train_y), "test_images": len(test_y),
            "fingerprint": digest.hexdigest()[:16]}


def channel_stats(x):
    """Per-channel mean and std of uint8 images, in [0, 1] units, in chunks (no float copy of them all); a channel
    of one value everywhere (std 0) is given std 1, so that no input becomes non-finite, and said."""
    total = torch.zeros(2, 3, dtype=torch.float64, device=x.device)
    low, high = torch.full((3,), 255, device=x.device), torch.zeros(3, device=x.device)
    for chunk in x.split(10000):
        c = chunk.double().transpose(0, 1).flatten(1)
        total += torch.stack([c.sum(1), c.pow(2).sum(1)])
        low, high = torch.minimum(low, c.amin(1)), torch.maximum(high, c.amax(1))
    n = x.numel() / 3
    mean = total[0] / n
    std = (total[1] / n - mean ** 2).clamp_min(0).sqrt() * math.sqrt(n / (n - 1))
    constant = (low == high).tolist()
    if any(constant):
        std = torch.where(torch.tensor(constant, device=x.device), torch.full_like(std, 255.0), std)
        print(f"note: the {' and '.join(c for c, k in zip(('red', 'green', 'blue'), constant) if k)} channel of the "
              f"training images has one value in every pixel (standard deviation 0): it is normalised with a "
              f"standard deviation of 1 instead, and carries no information", flush=True)
    return mean / 255, std / 255


def load_streamed(args, device):
    """ImageNet (DIR/train, DIR/val), or a folder data set with --stream, as StreamedData, its identity that of its
    files' bytes (read once at the start)."""
    data_dir = image_folder(args.data_dir)
    classes, train, test = split_folders(data_dir, ("val",) if args.dataset == "imagenet" else ("test", "val"))
    identity = files_identity(data_dir, train, test, classes, args.workers)
    train = [train[i] for i in subset([c for _, c in train], args.limit_train, "--limit-train")] if \
        args.limit_train else train
    test = [test[i] for i in subset([c for _, c in test], args.limit_test, "--limit-test")] if args.limit_test else test
    return StreamedData(classes, train, test, device, args.image_size or 224, args.workers,
                        *(CINIC_STATS if args.dataset == "cinic10" else IMAGENET_STATS), args.augment, identity)


class ImageFiles(torch.utils.data.Dataset):
    """Item i of a (path, label) list: (view_1, ..., view_n, label), uint8 (3, H, W) views. With `seed` set,
    view v of item i is drawn with torch's RNG seeded from (seed, i, v): the same in any worker, any order."""

    def __init__(self, files, transform):
        self.files, self.transform, self.seed, self.num_views = files, transform, None, 1

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from torchvision.transforms.functional import pil_to_tensor
        path, label = self.files[i]
        img = open_rgb(path)
        if self.seed is None:
            return pil_to_tensor(self.transform(img)), label
        views = []
        with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG (workers 0: the main process) alone
            for v in range(self.num_views):
                torch.manual_seed((self.seed + i * self.num_views + v) % 2 ** 63)
                views.append(pil_to_tensor(self.transform(img)))
        return (*views, label)


class StreamedData:
    """Images that stay files on disk: DataLoader workers decode and augment them (RandomResizedCrop, a flip; the
    test images: resized to 8/7 of the size, then the center crop), uint8 into pinned memory; the device normalises.
    Each epoch's order and every image's augmentation come from `gen`, so a resumed run continues exactly, whatever
    the number of workers. The same calls as Data."""

    def __init__(self, classes, train_files, test_files, device, image_size=224, workers=4, mean=IMAGENET_STATS[0],
                 std=IMAGENET_STATS[1], augment="crop+flip", identity=None):
        T = import_torchvision().transforms
        self.num_classes, self.classes, self.device, self.workers = len(classes), classes, device, workers
        self.image_size, self.identity = (image_size, image_size), identity
        eval_transform = T.Compose([T.Resize(round(image_size * 8 / 7)), T.CenterCrop(image_size)])  # 256 -> 224
        train_transform = {"none": eval_transform, "crop": T.RandomResizedCrop(image_size),  # --augment
                           "crop+flip": T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()])}
        self.train_set = ImageFiles(train_files, train_transform[augment])
        self.test_set, self.holdout_set = ImageFiles(test_files, eval_transform), None
        self.train_y, self.test_y = [torch.tensor([c for _, c in files]) for files in (train_files, test_files)]
        self.stats = [torch.as_tensor(v, dtype=torch.float32).tolist() for v in (mean, std)]
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
        idx, files = set(balanced_indices(self.train_y, per_class, self.num_classes).tolist()), self.train_set.files
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
        """One epoch: `steps` batches of a permutation drawn from gen, each image augmented num_views times with
        seeds drawn from gen (per image, so the same on any process); process `rank` of `world` gets images rank,
        rank + world, ... of every batch."""
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


def preprocess_image(image, preprocess):
    """A PIL image as a network's input batch (1, 3, H, W), prepared as its run prepared the test images
    (`preprocess`: an export's, load_backbone(path).preprocess): RGB, MNIST's padding, resized with PIL's bilinear
    filter (in-memory data) or its shorter side to 8/7 of the size and the center crop (streamed), normalised."""
    from PIL import Image, ImageOps
    T = import_torchvision().transforms
    img = ImageOps.expand(image.convert("RGB"), preprocess.get("pad") or 0, fill=0)
    h, w = preprocess["image_size"]
    if preprocess.get("resize") == "center_crop":
        img = T.CenterCrop(h)(T.Resize(round(h * 8 / 7))(img))
    elif img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    mean, std = normalisation(preprocess["mean"], preprocess["std"])
    return (torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() - mean) / std


# ==================================================================================================
# Errors: one sentence each, an exit status, nothing saved lost
# ==================================================================================================

class UsageError(Exception):
    """A mistake the user can fix (bad flag, missing data, wrong checkpoint): printed as one sentence."""


class SharedError(UsageError):
    """A stop every process of a torchrun run meets at once (agree(), a non-finite loss): said once, by rank 0."""


class NonFinite(SharedError):
    def __init__(self, part, step):
        super().__init__(f"{part} at step {step}")
        self.part, self.step = part, step


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (kill, a cluster's time limit, a preemption), raised where the run is."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def catch_interrupts():
    """From here SIGINT and SIGTERM raise Interrupted where the run is (no file is left half-written, so no signal
    is held back); a signal the caller set to be ignored (SIGINT in a background job) stays ignored."""
    def interrupted(signum, frame):
        raise Interrupted(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: the caller's handlers stay
            if signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, interrupted)


def os_reason(error):
    """What an OSError says, in words: the system's reason and the path it names."""
    reason = "a part of the path is a file, not a folder" if isinstance(error, NotADirectoryError) \
        else (error.strerror or type(error).__name__).lower()
    return f"{reason}: {error.filename}" if error.filename else reason


def interrupted(error, run):
    signum = getattr(error, "signum", signal.SIGINT)
    said = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    return f"interrupted ({said}): " + (run.where() if run else "before the run started; nothing was written")


def written(error, run):
    fix = "make room and continue" if error.errno in (28, 122) else "continue, once it can be written,"  # ENOSPC...
    return f"error: a file could not be written or read ({os_reason(error)}); " + \
        run.where().replace("; continue", "; " + fix)


STOPS = (  # what stopped the run, its exit status (128 + N for signal N, as a shell says it) and its sentence
    (KeyboardInterrupt, lambda e: 128 + getattr(e, "signum", signal.SIGINT), interrupted),
    (NonFinite, 2, lambda e, run: f"error: training stopped: the loss part '{e.part}' became non-finite at epoch "
                                  f"{run.epoch + 1}, step {e.step}; {run.where()}"),
    (UsageError, 2, lambda e, run: f"error: {e}"),
    (torch.OutOfMemoryError, 2, lambda e, run: f"error: out of memory on {run.settings.device} at --batch-size "
                                               f"{run.args.batch_size}; lower it (and --lr with it), or use more GPUs"),
    (BrokenPipeError, 141, lambda e, run: f"stopped: the output of this run was closed by the program reading it "
                                          f"(such as `| head`; write it into a file with > log); {run.where()}"),
    (OSError, 1, written),
    (lost_contact, 1, lambda e, run: f"error: another process of this run stopped (its error line, or torchrun's "
                                     f"report of how it ended, says why); continue from the last checkpoint with "
                                     f"--resume --out-dir {run.args.out_dir}"),
)


def stop(error, run=None):
    """How a run ends on an error a user can cause or fix: its STOPS sentence on stderr (said once, by rank 0, where
    every process meets it), what was written kept (a folder this run made with no checkpoint in it removed), and
    its exit status. Returns for any other error, which keeps its traceback."""
    rank = run.settings.rank if run is not None else int(os.environ.get("RANK", "0"))
    for kind, status, sentence in STOPS:
        if isinstance(error, kind) if isinstance(kind, type) else kind(error):
            if isinstance(error, BrokenPipeError):  # no second error when Python exits and flushes stdout
                with contextlib.suppress(OSError, ValueError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if rank == 0 or not (run is None or isinstance(error, (SharedError, KeyboardInterrupt))):
                with contextlib.suppress(OSError):
                    print(sentence(error, run).replace("error:", f"error (rank {rank}):", 1 if rank else 0),
                          file=sys.stderr, flush=True)
            if run is not None:
                run.tidy()
            sys.exit(status(error) if callable(status) else status)


if __name__ == "__main__":
    main()
