# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""FFL: Feature Fusion Learning, a fused classifier over the students' feature maps that they teach and learn from.

Paper: Jangho Kim, Minsung Hyun, Inseop Chung, Nojun Kwak, "Feature Fusion for Online Mutual Knowledge
Distillation", ICPR 2020 (arXiv:1904.09058). Official code (PyTorch): https://github.com/Jangho-Kim/FFL-pytorch

    python ffl.py --arch resnet32 --students 2                        # CIFAR-100, the paper's pair
    python ffl.py --arch resnet32,wrn_16_2 --students 2               # mixed architectures
    python ffl.py --dataset synthetic --arch resnet20 --epochs 2      # CPU demo

Idea. Two (or more) students are trained side by side. Their last feature maps are concatenated and fed to
a small *fusion module* (depthwise 3x3 -> BN-ReLU -> pointwise 1x1 -> BN-ReLU -> global pool -> FC), whose
output is a *fused classifier* that is better than either student. The fused classifier teaches every
student, and the students' ensemble teaches the fused classifier back (mutual knowledge distillation),
so knowledge flows in both directions every step; one backward updates everything.

Loss (one backward; z_i student logits, z_f fused logits, kd(s, t, T) = T^2 KL(softmax(t/T) || softmax(s/T))
with the teacher t detached; each line is one logged part, the loss is their sum; the paper's CE of every
sub-network and of the fused classifier, and its two KL terms, T^2-scaled; equation numbers not available):

    ce_s<i>  = CE(z_i, y)
    ce_fused = CE(z_f, y)
    kd_s<i>  = w(e) kd(z_i, z_f, T)               z_f teaches student i              T = --T (3)
    kd_fused = w(e) kd(z_f, mean_i z_i, T)        the students teach z_f
    w(e) = exp(-5 (1 - min(e, R)/R)^2)                                   R = --rampup (80), e = epoch from 0

Picture (two students; F_i = student i's last feature map; [v] = v detached: no gradient flows back):

    x --+--> s0 --> z_0 ---------------------------+--> CE(z_0, y) .................... ce_s0
        |    '----> F_0 ---.                       '--> w kd(z_0, [z_f], T) ........... kd_s0
        '--> s1 --> z_1 ---|-----------------------+--> CE(z_1, y) .................... ce_s1
             '----> F_1 ---+                       '--> w kd(z_1, [z_f], T) ........... kd_s1
                           v
              fusion_module(F_0, F_1) --> z_f -----+--> CE(z_f, y) .................... ce_fused
                                                   '--> w kd(z_f, [mean_i z_i], T) .... kd_fused
    ce_fused and kd_fused reach the students through F_i (--detach-fusion-input: [F_i] instead).

Recipe (CIFAR-100), RECIPES["paper"] below, each value with its source, from the official code (train_FFL.py,
utils.py): 300 epochs, batch 128, SGD Nesterov 0.9, lr 0.1 x0.1 at 150 and 225, wd 1e-4, fusion module wd 1e-5
(its own optimizer in the code; a parameter group here), T = 3, ramp-up 80, crop of the reflection-padded image
+ flip, no lr warm-up (--lr-warmup 0). The code's loop runs epochs 0 to 300 (301 epochs); 300 here:

    python ffl.py --recipe paper
    python scripts/reproduce.py --paper ffl      # beside FFSD's Table II, which prints FFL's figures

Decisions where the paper is silent or the code departs from it:
- The fusion module's input is NOT detached, as in the official code: the fused classifier's CE and KD
  gradients reach the students. `--detach-fusion-input` trains the fusion module on detached features.
- The official code shares the first two stages between the two branches (FFL-S); here the students are
  independent networks (any architectures, any count >= 2).
- Mixed architectures: each map is adaptively average-pooled to the smallest spatial size before the
  concatenation; the pointwise conv maps the sum of channels to their mean (2 x 64 -> 64, as in the code).
- The fused classifier's teacher is the mean of the students' logits (the code's `ensemble_logit`); the
  evaluated `ens` head is the mean of the students' softmax, as for every method.
- The ramp-up follows the code: epochs count from 0, so w(0) = exp(-5); `--rampup 0` turns it off. Outside
  common.py's loop w(e) is whatever set_epoch(e) last set: the full weight 1 if it is never called.
- The code adds 1e-7 to the teacher probabilities inside the KL; omitted here.
- Deployed models: the students (OUT/s0.pt, ...); the fused head needs every student and is not exported.

Contract (in short; the full statement is common.py's module docstring; this file needs only torch, so it can
be copied alone):
    student   nn.Module with forward(x) -> (logits, [stage outputs, shallow to deep]), checked when built
              (common.as_student(model) makes one of any torchvision classifier)
    training  loss, parts = method([x], y): parts {ce_s<i>, ce_fused, kd_s<i>, kd_fused}, each weighted (kd_* by
              w(e)), loss = their sum
    eval      method(x) -> {s0, s1, ..., ens, fused}: ens = log of the students' mean softmax, fused = z_f
    weights   method.set_epoch(e) before epoch e (from 0) sets w(e); never called: w = 1, the full weight.
              SGD groups: method.param_groups() (fusion module with its own weight decay). Exports OUT/s<i>.pt.

Results: the README's table 'Results measured with this code' (same recipe for every method, vanilla beside it).
"""
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


# ==================================================================================================
# Loss
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
# Method
# ==================================================================================================

class FFL(nn.Module):
    num_views = 1

    def __init__(self, students, num_classes, *, T=3.0, rampup=80, detach_fusion_input=False, fusion_wd=1e-5,
                 image_size=(32, 32)):
        super().__init__()
        if len(students) < 2:
            raise ValueError(f"feature fusion needs at least 2 students, got {len(students)}")
        shapes = [stage_shapes(s, image_size) for s in students]
        self.students = nn.ModuleList(students)
        self.fusion_module = FusionModule([s[-1][0] for s in shapes], num_classes)
        self.T, self.rampup, self.fusion_wd = T, rampup, fusion_wd
        self.detach_fusion_input = detach_fusion_input
        self.register_buffer("kd_weight", torch.ones(()), persistent=False)  # w(e), full until set_epoch

    def set_epoch(self, epoch):
        self.kd_weight.fill_(ramp_up(epoch, self.rampup))

    def logits(self, x):
        """The students' logits and the fused classifier's, on their last feature maps (pre-pool)."""
        logits, features = zip(*(s(x) for s in self.students))
        maps = [f[-1].detach() if self.detach_fusion_input else f[-1] for f in features]
        return list(logits), self.fusion_module(maps)[0]

    def forward(self, views, y=None):
        logits, z_f = self.logits(views[0] if self.training else views)
        if not self.training:
            return {**{f"s{i}": z for i, z in enumerate(logits)}, "ens": ensemble_head(logits), "fused": z_f}
        parts = fusion_loss(logits, z_f, y, self.T, self.kd_weight)
        return sum(parts.values()), parts

    def param_groups(self):
        return [dict(params=list(self.students.parameters())),
                dict(params=list(self.fusion_module.parameters()), weight_decay=self.fusion_wd)]

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
        "official code, train_FFL.py (its README's command: --depth 32)": dict(
            arch="resnet32", students=2, dataset="cifar100", epochs=300, lr=0.1, momentum=0.9, nesterov=True, wd=1e-4,
            milestones="150,225", lr_warmup=0, fusion_wd=1e-5, rampup=80, batch_size=128),
        "official code, utils.py (data loaders, KLLoss)": dict(augment="crop+flip", pad_mode="reflect", T=3.0),
    },
}


def add_arguments(parser):
    parser.recipes = RECIPES  # for common.main's --recipe
    parser.set_defaults(T=3.0)
    a = parser.add_argument
    a("--rampup", type=float, default=80, help="epochs R of the KD ramp-up w(e) (0: off)")
    a("--fusion-wd", type=float, default=1e-5, help="weight decay of the fusion module")
    a("--detach-fusion-input", action="store_true",
      help="stop the fused classifier's gradients at the students' feature maps")


def build(args, data):
    import common
    if args.students < 2:
        raise common.UsageError(f"feature fusion needs at least 2 students, got --students {args.students}")
    if args.fusion_wd < 0 or args.rampup < 0:
        raise common.UsageError("--fusion-wd and --rampup must be non-negative")
    return FFL(common.build_students(args, data), data.num_classes, T=args.T, rampup=args.rampup,
               detach_fusion_input=args.detach_fusion_input, fusion_wd=args.fusion_wd,
               image_size=tuple(data.image_size))


def main(argv=None):
    try:
        import common
    except ModuleNotFoundError as e:  # copied alone: the method needs only torch, its script needs common.py
        raise SystemExit("error: ffl.py trains through common.py, which is not beside it: run it from a clone of "
                         "the repository, or use FFL in your own training loop (README)") if e.name == "common" else e
    return common.main("ffl", add_arguments, build, argv, __doc__)


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
