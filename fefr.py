# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""FEFR: feature early fusion and reconstruction, FFL with each student's maps enriched before the fusion.

Paper: "Feature early fusion and reconstruction for online knowledge distillation" (FEFR), Journal of
Intelligent & Fuzzy Systems, 2023, doi:10.3233/JIFS-232626 (authors not available to us). No official code.

    python fefr.py --arch resnet32 --students 2                        # CIFAR-100
    python fefr.py --arch resnet32,wrn_16_2 --students 2               # mixed pair (the paper's Table 4)
    python fefr.py --dataset synthetic --arch resnet20 --epochs 2      # CPU demo

Idea. FFL fuses only the students' last feature maps. FEFR first enriches each student's map before the
fusion: (1) early fusion — two intermediate stage outputs F1, F2 and the last one F3 are summed pairwise
(F12 = conv(F1) + F2, F23 = conv(F2) + F3, the conv a strided 3x3 conv + BN that matches the shape) and
concatenated into F_i, so the last map carries the shallower, more geometric, features too;
(2) reconstruction — F_i's channels are cut into p groups and each group is averaged with the next one, so
information crosses groups; (3) dual attention — CBAM's channel attention then spatial attention.
(4) The refined maps of all students are concatenated into FFL's fusion module (DW 3x3 -> PW 1x1 -> GAP ->
FC), the fused classifier, which teaches the students and learns from their ensemble as in FFL.

Model and loss (the paper's Sec. 3.2.1 early fusion, 3.2.2 reconstruction, 3.2.3 dual attention, then the
overall fusion module; ce_s<i> is its Eq. 2, the other equation numbers are not available):

    F_i    = [ pool(conv(F1) + F2), conv(F2) + F3 ]        channels C2 + C3 at F3's size  (--no-early-fusion: F3)
    rec_k  = (g_k + g_(k+1 mod p)) / 2,  F_i = [g_1..g_p]  p = --groups (4)           (--no-reconstruction)
    F'_i   = SA(CA(F_i) * F_i) * (CA(F_i) * F_i)           CBAM, reduction 16          (--no-attention)
    z_f    = FusionModule([F'_1, ..., F'_K])
    FFL's loss: the logged parts below (kd's teacher detached), the loss is their sum
      ce_s<i> = CE(z_i, y)                          ce_fused = CE(z_f, y)
      kd_s<i> = w(e) kd(z_i, z_f, T)                kd_fused = w(e) kd(z_f, mean_i z_i, T)
    w(e)   = exp(-5 (1 - min(e, R)/R)^2), e = epoch from 0                 R = --rampup (80), T = --T (3)

Picture (two students; F1, F2, F3 = a student's last three stage outputs; [v] = v detached):

    x --+--> s0 --> z_0 ------------------------------------------+--> CE(z_0, y) ............... ce_s0
        |    '----> F1, F2, F3 --> refiner_0 --> F'_0 ---.        '--> w kd(z_0, [z_f], T) ...... kd_s0
        '--> s1 --> z_1 ---------------------------------|--------+--> CE(z_1, y) ............... ce_s1
             '----> F1, F2, F3 --> refiner_1 --> F'_1 ---+        '--> w kd(z_1, [z_f], T) ...... kd_s1
                                                         v
                                fusion_module(F'_0, F'_1) --> z_f +--> CE(z_f, y) ............... ce_fused
                                                                  '--> w kd(z_f, [mean_i z_i], T) kd_fused
    refiner = early fusion -> reconstruction -> dual attention (each one can be switched off); ce_fused
    and kd_fused train the refiners and reach the students through F1..F3 (--detach-fusion-input: [F1..F3]).

Ablation (the paper's Table 7): A = early fusion only (`--no-reconstruction --no-attention`),
B = + reconstruction (`--no-attention`), C = + dual attention (default). With all three switched off the
model is FFL (last maps only).

Recipe: the paper states none. RECIPES["paper"] below is FFL's official code's CIFAR-100 recipe (300
epochs, batch 128, SGD Nesterov 0.9, lr 0.1 x0.1 at 150 and 225, wd 1e-4, fusion branch wd 1e-5, crop of the
reflection-padded image + flip, no lr warm-up: --lr-warmup 0), each value with its source, on the ResNet-32
pair of Table 7:

    python fefr.py --recipe paper
    python scripts/reproduce.py --paper fefr     # Table 4's gains over DML and Table 7's ablation, as differences

The paper reports ImageNet 2012 and CINIC-10 without a recipe or the networks: no recipe here.

Decisions where the paper is silent:
- F1, F2 = the outputs of the third- and second-to-last stages, F3 = the last (resnet/wrn: 16x32x32,
  32x16x16, 64x8x8 for resnet32). conv = 3x3 conv, stride = the size ratio, + BN, no activation (the
  sums add raw maps). F12 is brought to F23's size by adaptive average pooling (no parameters).
- Reconstruction: the text says "jump around and add up ... averaging ... concatenate in order"; read as
  each group averaged with the next one, cyclically. The channel count must be divisible by --groups.
- Dual attention = CBAM as in its official code: shared MLP with biases (reduction 16, at least 1 hidden
  unit), channel descriptor from avg- and max-pool summed before the sigmoid; spatial map from [max, mean]
  over channels -> 7x7 conv -> BN -> sigmoid.
- Loss, T = 3 and the ramp-up are FFL's (the paper gives the loss's form, not T); the fusion module's input
  is not detached (`--detach-fusion-input`); every module outside the students uses --fusion-wd.
- Deployed models: the students alone (the refiners and the fusion module serve the fused classifier).

Contract (in short; the full statement is common.py's module docstring; this file needs only torch, so it can
be copied alone):
    student   nn.Module with forward(x) -> (logits, [stage outputs, shallow to deep]), checked when built
              (common.as_student(model) makes one of any torchvision classifier); early fusion needs 3 stages
    training  loss, parts = method([x], y): parts {ce_s<i>, ce_fused, kd_s<i>, kd_fused}, each weighted (kd_* by
              w(e)), loss = their sum
    eval      method(x) -> {s0, s1, ..., ens, fused}: ens = log of the students' mean softmax, fused = z_f
    weights   method.set_epoch(e) before epoch e (from 0) sets w(e); never called: w = 1, the full weight.
              SGD groups: method.param_groups() (refiners + fusion module: --fusion-wd). Exports OUT/s<i>.pt.

Results: the README's table 'Results measured with this code' (same recipe for every method, vanilla beside it).
"""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ==================================================================================================
# Modules
# ==================================================================================================

# the same text in ffl.py, ffcl.py, fefr.py and ffsd.py: test_methods.py keeps the copies identical
class FusionModule(nn.Module):
    """FFL's fusion module: the maps concatenated (each pooled to the smallest size) -> DW 3x3 -> BN-ReLU -> PW 1x1
    to the mean channel count -> BN-ReLU = the fused map; GAP -> FC = the fused classifier. forward(maps) ->
    (fused logits, fused map). 2 x 64 channels, 100 classes: 1,152 + 256 + 8,192 + 128 + 6,500 = 16,228 parameters."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        c, out = sum(in_channels), sum(in_channels) // len(in_channels)
        self.depthwise = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU(True))
        self.pointwise = nn.Sequential(nn.Conv2d(c, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True))
        self.fc = nn.Linear(out, num_classes)
        for conv in (self.depthwise[0], self.pointwise[0]):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, maps):
        size = min((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])  # mixed architectures: the smallest
        x = torch.cat([m if m.shape[-2:] == size else F.adaptive_avg_pool2d(m, size) for m in maps], 1)
        fused_map = self.pointwise(self.depthwise(x))
        return self.fc(fused_map.mean((2, 3))), fused_map


def conv_bn(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class EarlyFusion(nn.Module):
    """Sec. 3.2.1: F12 = conv(F1) + F2, F23 = conv(F2) + F3, F_i = [pool(F12), F23]."""

    def __init__(self, shapes):
        super().__init__()
        (c1, h1, _), (c2, h2, _), (c3, h3, _) = shapes
        # strided 3x3 conv + BN to the next stage's shape (every zoo backbone halves the size per stage)
        self.down12 = conv_bn(c1, c2, max(1, round(h1 / h2)))
        self.down23 = conv_bn(c2, c3, max(1, round(h2 / h3)))
        self.out_channels = c2 + c3

    def forward(self, f1, f2, f3):
        f12 = self.down12(f1) + f2                       # "sum" early fusion (Fig. 3)
        f23 = self.down23(f2) + f3
        return torch.cat([F.adaptive_avg_pool2d(f12, f23.shape[-2:]), f23], 1)


class Reconstruction(nn.Module):
    """Sec. 3.2.2: split into p channel groups, rec_k = (g_k + g_(k+1 mod p)) / 2, concatenate in order."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        g = x.unflatten(1, (self.groups, -1))
        return ((g + g.roll(-1, dims=1)) / 2).flatten(1, 2)


class DualAttention(nn.Module):
    """Sec. 3.2.3 (CBAM): channel attention ("what"), then spatial attention ("where")."""

    def __init__(self, channels, *, reduction=16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, 1, 3, bias=False), nn.BatchNorm2d(1))

    def forward(self, x):
        # w_c = sigmoid(MLP(avg-pool(x)) + MLP(max-pool(x)))
        w_c = torch.sigmoid(self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3))))
        x = x * w_c[:, :, None, None]
        # w_s = sigmoid(BN(conv7x7([max_c(x), mean_c(x)])))
        w_s = torch.sigmoid(self.spatial(torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)))
        return x * w_s


class Refiner(nn.Module):
    """One student's path to the overall fusion: early fusion -> reconstruction -> dual attention."""

    def __init__(self, shapes, *, groups=4, early_fusion=True, reconstruction=True, attention=True):
        super().__init__()
        self.early = EarlyFusion(shapes[-3:]) if early_fusion else None
        self.out_channels = self.early.out_channels if early_fusion else shapes[-1][0]
        self.reconstruction = Reconstruction(groups) if reconstruction else nn.Identity()
        self.attention = DualAttention(self.out_channels) if attention else nn.Identity()

    def forward(self, features):
        x = self.early(*features[-3:]) if self.early is not None else features[-1]
        return self.attention(self.reconstruction(x))


# ==================================================================================================
# Loss: FFL's
# ==================================================================================================

# the same text in ffl.py and fefr.py: test_methods.py keeps the copies identical
def fusion_loss(logits, z_f, y, T, w):
    """FFL's loss as weighted parts: CE of each student and of z_f; w * kd from z_f to each student and from the
    students' mean logits to z_f."""
    parts = {f"ce_s{i}": F.cross_entropy(z.float(), y) for i, z in enumerate(logits)}
    parts["ce_fused"] = F.cross_entropy(z_f.float(), y)
    parts.update({f"kd_s{i}": w * kd_loss(z, z_f, T) for i, z in enumerate(logits)})  # z_f teaches each student
    parts["kd_fused"] = w * kd_loss(z_f, torch.stack(logits).mean(0), T)                # the students teach z_f
    return parts


# ==================================================================================================
# Method: FFL's with each student's maps refined before the fusion
# ==================================================================================================

class FEFR(nn.Module):
    num_views = 1

    def __init__(self, students, num_classes, *, T=3.0, rampup=80, groups=4, early_fusion=True, reconstruction=True,
                 attention=True, detach_fusion_input=False, fusion_wd=1e-5, image_size=(32, 32)):
        super().__init__()
        if len(students) < 2:
            raise ValueError(f"feature fusion needs at least 2 students, got {len(students)}")
        shapes = [stage_shapes(s, image_size) for s in students]
        if early_fusion and min(len(s) for s in shapes) < 3:
            raise ValueError("early fusion needs three stage outputs per student; turn it off (--no-early-fusion)")
        self.students = nn.ModuleList(students)
        self.refiners = nn.ModuleList(Refiner(s, groups=groups, early_fusion=early_fusion,
                                              reconstruction=reconstruction, attention=attention) for s in shapes)
        for k, r in enumerate(self.refiners):
            if reconstruction and r.out_channels % groups:
                raise ValueError(f"student {k}'s fused map has {r.out_channels} channels, "
                                 f"not divisible by the {groups} groups (--groups)")
        self.fusion_module = FusionModule([r.out_channels for r in self.refiners], num_classes)
        self.T, self.rampup, self.fusion_wd, self.detach_fusion_input = T, rampup, fusion_wd, detach_fusion_input
        self.register_buffer("kd_weight", torch.ones(()), persistent=False)  # w(e), full until set_epoch

    def set_epoch(self, epoch):
        self.kd_weight.fill_(ramp_up(epoch, self.rampup))

    def logits(self, x):
        """The students' logits and the fused classifier's, on the students' refined maps."""
        logits, features = zip(*(s(x) for s in self.students))
        if self.detach_fusion_input:
            features = [[f.detach() for f in fs] for fs in features]
        return list(logits), self.fusion_module([refine(f) for refine, f in zip(self.refiners, features)])[0]

    def forward(self, views, y=None):
        logits, z_f = self.logits(views[0] if self.training else views)
        if not self.training:
            return {**{f"s{i}": z for i, z in enumerate(logits)}, "ens": ensemble_head(logits), "fused": z_f}
        parts = fusion_loss(logits, z_f, y, self.T, self.kd_weight)
        return sum(parts.values()), parts

    def param_groups(self):  # the refiners and the fusion module form the fusion branch, with its own wd
        branch = list(self.refiners.parameters()) + list(self.fusion_module.parameters())
        return [dict(params=list(self.students.parameters())), dict(params=branch, weight_decay=self.fusion_wd)]

    def export(self):
        """{"s<k>": student k as plain data (student_payload)}, what a run saves as OUT/s<k>.pt; needs only torch."""
        return {f"s{k}": student_payload(s) for k, s in enumerate(self.students)}


# ==================================================================================================
# Flags and entry point
# ==================================================================================================

# --recipe NAME (common.main): a paper's settings as flag defaults (a flag given explicitly still wins), each
# value once, under its source: the paper, the official code, or this project where both are silent
RECIPES = {
    "paper": {
        "paper, Table 7 (ablation on ResNet-32, CIFAR-100)": dict(arch="resnet32", students=2, dataset="cifar100"),
        "FFL's official code, train_FFL.py (the FEFR paper states no recipe)": dict(
            epochs=300, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, wd=1e-4, milestones="150,225", lr_warmup=0,
            fusion_wd=1e-5, rampup=80),
        "FFL's official code, utils.py (data loaders, KLLoss)": dict(augment="crop+flip", pad_mode="reflect", T=3.0),
    },
}


def add_arguments(parser):
    parser.recipes = RECIPES  # for common.main's --recipe
    a = parser.add_argument
    a("--groups", type=int, default=4, help="p, channel groups of the reconstruction")
    a("--early-fusion", action=argparse.BooleanOptionalAction, default=True, help="sum early fusion (FE)")
    a("--reconstruction", action=argparse.BooleanOptionalAction, default=True, help="reconstruction (FC)")
    a("--attention", action=argparse.BooleanOptionalAction, default=True, help="dual attention (FD)")
    parser.set_defaults(T=3.0)  # FFL's temperature, ramp-up and fusion flags
    a("--rampup", type=float, default=80, help="epochs R of the KD ramp-up w(e) (0: off)")
    a("--fusion-wd", type=float, default=1e-5, help="weight decay of the refiners and the fusion module")
    a("--detach-fusion-input", action="store_true",
      help="stop the fused classifier's gradients at the students' feature maps")


def build(args, data):
    import common
    if args.groups < 1 or args.fusion_wd < 0 or args.rampup < 0:
        raise common.UsageError("--groups must be at least 1, --fusion-wd and --rampup non-negative")
    if args.students < 2:
        raise common.UsageError(f"feature fusion needs at least 2 students, got --students {args.students}")
    return FEFR(common.build_students(args, data), data.num_classes, T=args.T, rampup=args.rampup,
                groups=args.groups, early_fusion=args.early_fusion, reconstruction=args.reconstruction,
                attention=args.attention, detach_fusion_input=args.detach_fusion_input, fusion_wd=args.fusion_wd,
                image_size=tuple(data.image_size))


def main(argv=None):
    try:
        import common
    except ModuleNotFoundError as e:  # copied alone: the method needs only torch, its script needs common.py
        raise SystemExit("error: fefr.py trains through common.py, which is not beside it: run it from a clone of "
                         "the repository, or use FEFR in your own training loop (README)") if e.name == "common" else e
    return common.main("fefr", add_arguments, build, argv, __doc__)


# ==================================================================================================
# Shared with the other method files: the same text in each (test_methods.py checks it), so that
# every file can be copied alone
# ==================================================================================================

def kd_loss(z_s, z_t, T):
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean, in float32; the teacher z_t is detached."""
    log_p_s = F.log_softmax(z_s.float() / T, dim=1)
    log_p_t = F.log_softmax(z_t.detach().float() / T, dim=1)
    return T * T * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def ramp_up(epoch, length):
    """w(e) = exp(-5 (1 - min(e, R)/R)^2), the consistency ramp-up of the official code."""
    if length <= 0:
        return 1.0
    return math.exp(-5.0 * (1.0 - min(epoch, length) / length) ** 2)


def ensemble_head(logits):
    """The `ens` head: log of the mean of the students' softmax."""
    return torch.stack([z.float().softmax(1) for z in logits]).mean(0).log()


@torch.no_grad()
def stage_shapes(student, image_size):
    """(C, H, W) of each stage output for one image of image_size (H, W), from an eval-mode forward (the BN
    statistics stay untouched); a student that breaks the contract above stops here with one sentence."""
    mode, p = student.training, next(student.parameters())
    out = student.eval()(torch.zeros(1, 3, *image_size, device=p.device, dtype=p.dtype))
    student.train(mode)
    if not (isinstance(out, tuple) and len(out) == 2 and torch.is_tensor(out[0]) and isinstance(out[1], (list, tuple))
            and len(out[1]) > 0 and all(torch.is_tensor(f) and f.dim() == 4 for f in out[1])):
        raise TypeError(f"a student must return (logits, [stage outputs]) but {type(student).__name__} does not; "
                        f"make its forward return them (torchvision's create_feature_extractor picks a classifier's "
                        f"stage outputs by node name)")
    return [tuple(f.shape[1:]) for f in out[1]]


def student_payload(model):
    """A deployable student as plain data, readable with torch.load(path, weights_only=True) (common.py's
    backbone_payload writes the same): a zoo backbone's (one with .arch) names what rebuilds it
    (common.load_backbone); any other student's weights load into a fresh one of its own class with
    model.load_state_dict(payload["state_dict"])."""
    payload = {"kind": "student", "module": type(model).__name__,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if hasattr(model, "arch"):
        payload.update(kind="backbone", arch=model.arch, num_classes=model.num_classes,
                       image_size=getattr(model, "image_size", 32))
    return payload


if __name__ == "__main__":
    main()
