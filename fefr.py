"""FEFR — Feature Early Fusion and Reconstruction for Online Knowledge Distillation (2023).

Paper: papers/fefr_feature_early_fusion_reconstruction.txt (no official code). Needs ffl.py beside it
(`FusionModule`, the `FFL` class and its loss): copy both files together.

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

    F_i    = [ pool(conv(F1) + F2), conv(F2) + F3 ]        channels C2 + C3 at F3's size  (--no-early-fusion: F3)
    rec_k  = (g_k + g_(k+1 mod p)) / 2,  F_i = [g_1..g_p]  p = --groups (4)           (--no-reconstruction)
    F'_i   = SA(CA(F_i) * F_i) * (CA(F_i) * F_i)           CBAM, reduction 16          (--no-attention)
    z_f    = FusionModule([F'_1, ..., F'_K])
    L      = sum_i CE(z_i) + CE(z_f) + w(e) [ sum_i kd(z_i, z_f, T) + kd(z_f, mean_i z_i, T) ]   (FFL's loss)

Ablation (the paper's Table 7): A = early fusion only (`--no-reconstruction --no-attention`),
B = + reconstruction (`--no-attention`), C = + dual attention (default). With all three switched off the
model is FFL (last maps only).

Paper recipe: not stated in the text; FFL's CIFAR recipe (300 epochs, batch 128, SGD Nesterov 0.9, lr 0.1
x0.1 at 150 and 225, wd 1e-4, fusion branch wd 1e-5) is the default here:

    python fefr.py --arch resnet32 --epochs 300 --batch-size 128 --wd 1e-4 --milestones 150,225

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

Results measured with this code (2-core x86-64 CPU, torch 2.14.1, 2026-11-24): real CIFAR-10 (the JPEG
copy in ../shared/data), a class-balanced 4,000-image training subset and 2,000 test images, resnet20
students, 6 epochs, batch 64, lr 0.1 x0.1 at epochs 3 and 4; mean ± std over seeds 0 and 1 of the
final-epoch top-1 (%):
    fefr     s0 44.45 ± 1.13, s1 46.22 ± 1.87, ens 45.95 ± 1.91, fused 46.62 ± 1.38
    vanilla  s0 47.45 ± 1.91, s1 46.27 ± 3.71, ens 48.77 ± 0.74
    best student 46.22 vs vanilla 48.85 (-2.62)
Command (README, 'Results'):
    python scripts/compare.py --methods vanilla,dml,kdcl,ffl,ffcl,fefr,ffsd,mkb_cl --seeds 0,1 \
        --arch resnet20 --students 2 --dataset folder --data-dir CIFAR10_JPEG --limit-train 4000 \
        --limit-test 2000 --epochs 6 --batch-size 64 --extra ffl=--rampup=2 --extra fefr=--rampup=2 \
        --extra "ffsd=--students=3 --warmup=1"
FEFR does not beat vanilla in this short schedule (ramp-up shortened to 2 epochs, --rampup 2); its fused
head is its best head. The refiners add parameters that 6 epochs on 4,000 images cannot train well.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

import ffl
from ffl import FFL, FusionModule, check_fusion_args, feature_shapes


# ==================================================================================================
# Modules
# ==================================================================================================

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

    def __init__(self, channels, reduction=16):
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

    def __init__(self, shapes, groups=4, early_fusion=True, reconstruction=True, attention=True):
        super().__init__()
        self.early = EarlyFusion(shapes[-3:]) if early_fusion else None
        self.out_channels = self.early.out_channels if early_fusion else shapes[-1][0]
        self.reconstruction = Reconstruction(groups) if reconstruction else nn.Identity()
        self.attention = DualAttention(self.out_channels) if attention else nn.Identity()

    def forward(self, features):
        x = self.early(*features[-3:]) if self.early is not None else features[-1]
        return self.attention(self.reconstruction(x))


# ==================================================================================================
# Method: FFL with each student's maps refined before the fusion (loss, ramp-up, heads: FFL's)
# ==================================================================================================

class FEFR(FFL):
    def __init__(self, students, refiners, fusion_module, T=3.0, rampup=80, detach_fusion_input=False,
                 fusion_wd=1e-5):
        super().__init__(students, fusion_module, T, rampup, detach_fusion_input, fusion_wd)
        self.refiners = nn.ModuleList(refiners)

    def fusion_maps(self, features):
        return [refine(f) for refine, f in zip(self.refiners, features)]


# ==================================================================================================
# Flags and entry point
# ==================================================================================================

def add_arguments(parser):
    ffl.add_arguments(parser)  # --T 3, --rampup, --fusion-wd, --detach-fusion-input
    a = parser.add_argument
    a("--groups", type=int, default=4, help="p, channel groups of the reconstruction")
    a("--early-fusion", action=argparse.BooleanOptionalAction, default=True, help="sum early fusion (FE)")
    a("--reconstruction", action=argparse.BooleanOptionalAction, default=True, help="reconstruction (FC)")
    a("--attention", action=argparse.BooleanOptionalAction, default=True, help="dual attention (FD)")


def build(args, data):
    import common
    check_fusion_args(args)
    if args.groups < 1:
        raise common.UsageError(f"--groups must be at least 1, got {args.groups}")
    students = common.build_students(args, data.num_classes)
    shapes = feature_shapes(students, data.train_x.shape[1:])
    if args.early_fusion and min(len(s) for s in shapes) < 3:
        raise common.UsageError("early fusion needs three stage outputs per student; use --no-early-fusion")
    refiners = [Refiner(s, args.groups, args.early_fusion, args.reconstruction, args.attention) for s in shapes]
    for arch, r in zip(args.archs, refiners):
        if args.reconstruction and r.out_channels % args.groups:
            raise common.UsageError(f"{arch}'s fused map has {r.out_channels} channels, "
                                    f"not divisible by --groups {args.groups}")
    fusion_module = FusionModule([r.out_channels for r in refiners], data.num_classes)
    return FEFR(students, refiners, fusion_module, args.T, args.rampup, args.detach_fusion_input, args.fusion_wd)


def main(argv=None):
    import common
    return common.main("fefr", add_arguments, build, argv, __doc__)


if __name__ == "__main__":
    main()
