"""Shared code for every method: backbones, data, the train/eval loop, checkpoints, logging, flags.

Run alone it trains K independent students, the *vanilla* baseline every method is compared with:

    python common.py --arch resnet32 --students 2                 # CIFAR-100
    python common.py --dataset synthetic --epochs 2 --arch resnet20   # zero-setup demo on CPU

The method protocol (duck-typed, so a method file needs nothing from here for its modules and loss):

    method.forward(views, y)  training: views is a list of `method.num_views` augmented batches
                              (B, 3, H, W) of the same images; returns (total_loss, {name: loss_part})
    method.forward(x)         evaluation: returns {head_name: logits}, e.g. s0, s1, ens, fused, leader
    optional:
    method.num_views          how many independently augmented views a step gets (default 1)
    method.param_groups(args) SGD parameter groups, e.g. a fusion module with its own weight decay
                              (default: every trainable parameter with --wd)
    method.extra_optimizer(args, params_in_sgd)  a second optimizer over other parameters (FFSD's Adam);
                              stepped after the same backward, scheduled with the same milestones
    method.set_epoch(epoch, epochs)   called before each training epoch (ramp-ups)
    method.epoch_end(epoch, data)     called after each training epoch; may return {name: float} to log
    method.export()           {name: payload} of deployable models, saved as OUT/<name>.pt at the end
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class UsageError(Exception):
    """A mistake the user can fix (bad flag, missing data, wrong checkpoint): printed as one sentence."""


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
    "mobilenetv2": lambda nc: tv_mobilenetv2(nc, "mobilenetv2"),
    "shufflenetv2": lambda nc: tv_shufflenetv2(nc, "shufflenetv2"),
    "vgg16": lambda nc: tv_vgg16(nc, "vgg16"),
}


def build_model(arch: str, num_classes: int) -> Backbone:
    """A backbone by zoo name; forward(x) -> (logits, [stage outputs])."""
    if arch not in ARCHS:
        raise UsageError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_payload(model: Backbone) -> dict:
    """A deployable backbone as plain data: load it with `load_backbone` (no method code needed)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"kind": "backbone", "arch": model.arch, "num_classes": model.num_classes, "state_dict": state}


def load_backbone(path: str, arch: str = None, num_classes: int = None) -> Backbone:
    """Load a file written from `backbone_payload`; optionally insist on its architecture and class count."""
    payload = load_checkpoint(path)
    if payload.get("kind") != "backbone":
        raise UsageError(f"{path} is not a saved backbone (it has no 'kind: backbone' entry)")
    if arch is not None and payload["arch"] != arch:
        raise UsageError(f"{path} holds a {payload['arch']}, but {arch} was asked for")
    if num_classes is not None and payload["num_classes"] != num_classes:
        raise UsageError(f"{path} was trained for {payload['num_classes']} classes, but the data has {num_classes}")
    model = build_model(payload["arch"], payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    return model
