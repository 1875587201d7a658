"""FFL — Feature Fusion for Online Mutual Knowledge Distillation (Kim, Hyun, Chung, Kwak; ICPR 2020).

Paper: https://arxiv.org/abs/1904.09058 — official code: https://github.com/Jangho-Kim/FFL-pytorch

    python ffl.py --arch resnet32 --students 2                        # CIFAR-100, the paper's pair
    python ffl.py --arch resnet32,wrn_16_2 --students 2               # mixed architectures
    python ffl.py --dataset synthetic --arch resnet20 --epochs 2      # CPU demo

Idea. Two (or more) students are trained side by side. Their last feature maps are concatenated and fed to
a small *fusion module* (depthwise 3x3 -> BN-ReLU -> pointwise 1x1 -> BN-ReLU -> global pool -> FC), whose
output is a *fused classifier* that is better than either student. The fused classifier teaches every
student, and the students' ensemble teaches the fused classifier back (mutual knowledge distillation),
so knowledge flows in both directions every step; one backward updates everything.

Loss (one backward; z_i student logits, z_f fused logits, kd(s, t, T) = T^2 KL(softmax(t/T) || softmax(s/T))
with the teacher t detached):

    L = sum_i CE(z_i, y) + CE(z_f, y)
        + w(e) * [ sum_i kd(z_i, z_f, T) + kd(z_f, mean_i z_i, T) ]      T = --T (3)
    w(e) = exp(-5 (1 - min(e, R)/R)^2)                                   R = --rampup (80), e = epoch from 0

This file also holds what FFCL (ffcl.py) and FEFR (fefr.py) reuse: `FusionModule`, `kd`, `fusion_losses`,
`feature_shapes` and the `FFL` method class, which they subclass to change what is fused or how it teaches.

Paper recipe (CIFAR-100, official code): 300 epochs, batch 128, SGD Nesterov 0.9, lr 0.1 x0.1 at 150 and
225, wd 1e-4, fusion module wd 1e-5 (its own optimizer in the code; a parameter group here):

    python ffl.py --arch resnet32 --epochs 300 --batch-size 128 --lr 0.1 --nesterov --wd 1e-4 \
        --milestones 150,225 --fusion-wd 1e-5 --T 3 --rampup 80

Decisions where the paper is silent or the code departs from it:
- The fusion module's input is NOT detached, as in the official code: the fused classifier's CE and KD
  gradients reach the students. `--detach-fusion-input` trains the fusion module on detached features.
- The official code shares the first two stages between the two branches (FFL-S); here the students are
  independent networks (any architectures, any count >= 2).
- Mixed architectures: each map is adaptively average-pooled to the smallest spatial size before the
  concatenation; the pointwise conv maps the sum of channels to their mean (2 x 64 -> 64, as in the code).
- The fused classifier's teacher is the mean of the students' logits (the code's `ensemble_logit`); the
  evaluated `ens` head is the mean of the students' softmax, as for every method.
- The ramp-up follows the code: epochs count from 0, so w(0) = exp(-5); `--rampup 0` turns it off.
- The code adds 1e-7 to the teacher probabilities inside the KL; omitted here.
- Deployed models: the students (OUT/s0.pt, ...); the fused head needs every student and is not exported.

Results measured with this code (2-core x86-64 CPU, torch 2.14.1, 2026-11-24): real CIFAR-10 (the JPEG
copy in ../shared/data), a class-balanced 4,000-image training subset and 2,000 test images, resnet20
students, 6 epochs, batch 64, lr 0.1 x0.1 at epochs 3 and 4; mean ± std over seeds 0 and 1 of the
final-epoch top-1 (%):
    ffl      s0 46.35 ± 1.56, s1 47.83 ± 2.37, ens 48.70 ± 0.07, fused 48.83 ± 1.38
    vanilla  s0 47.45 ± 1.91, s1 46.27 ± 3.71, ens 48.77 ± 0.74
    best student 48.48 vs vanilla 48.85 (-0.37)
Command (README, 'Results'):
    python scripts/compare.py --methods vanilla,dml,kdcl,ffl,ffcl,fefr,ffsd,mkb_cl --seeds 0,1 \
        --arch resnet20 --students 2 --dataset folder --data-dir CIFAR10_JPEG --limit-train 4000 \
        --limit-test 2000 --epochs 6 --batch-size 64 --extra ffl=--rampup=2 --extra fefr=--rampup=2 \
        --extra "ffsd=--students=3 --warmup=1"
FFL stays within a standard deviation of vanilla here (ramp-up shortened to 2 epochs for the 6-epoch
schedule, --rampup 2); the fused head is the best head. The short schedule cannot show the paper's gains.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ==================================================================================================
# Modules
# ==================================================================================================

class FusionModule(nn.Module):
    """Concatenated feature maps -> DW 3x3 -> BN-ReLU -> PW 1x1 -> BN-ReLU -> GAP -> FC (the fused classifier).
    2 x 64 channels, 100 classes: 1,152 + 256 + 8,192 + 128 + 6,500 = 16,228 parameters."""

    def __init__(self, in_channels, num_classes, out_channels=None):
        super().__init__()
        total = sum(in_channels)
        out_channels = out_channels or total // len(in_channels)
        self.depthwise = nn.Sequential(nn.Conv2d(total, total, 3, 1, 1, groups=total, bias=False),
                                       nn.BatchNorm2d(total), nn.ReLU(inplace=True))
        self.pointwise = nn.Sequential(nn.Conv2d(total, out_channels, 1, bias=False),
                                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.fc = nn.Linear(out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, maps):
        # different architectures: bring every map to the smallest spatial size before concatenating
        size = min((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if m.shape[-2:] == size else F.adaptive_avg_pool2d(m, size) for m in maps]
        hidden = self.pointwise(self.depthwise(torch.cat(maps, 1)))
        return self.fc(hidden.mean((2, 3)))


@torch.no_grad()
def feature_shapes(students, image_shape):
    """(C, H, W) of every stage output of every student, from one eval-mode forward of a dummy image."""
    shapes = []
    for net in students:
        was_training = net.training
        net.eval()  # leaves the BN running statistics untouched
        _, features = net(torch.zeros(1, *image_shape, device=next(net.parameters()).device))
        net.train(was_training)
        shapes.append([tuple(f.shape[1:]) for f in features])
    return shapes


# ==================================================================================================
# Loss
# ==================================================================================================

def kd(z_s, z_t, T):
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean, teacher detached, in float32."""
    log_p_s = F.log_softmax(z_s.float() / T, dim=1)
    log_p_t = F.log_softmax(z_t.detach().float() / T, dim=1)
    return T * T * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def ramp_up(epoch, length):
    """w(e) = exp(-5 (1 - min(e, R)/R)^2), the consistency ramp-up of the official code."""
    if length <= 0:
        return 1.0
    return math.exp(-5.0 * (1.0 - min(epoch, length) / length) ** 2)


def fusion_losses(logits, fused, y, T):
    """FFL's terms, unweighted: ({ce_s0.., ce_fused}, {kd_s0.., kd_fused})."""
    ce = {f"ce_s{i}": F.cross_entropy(z, y) for i, z in enumerate(logits)}
    ce["ce_fused"] = F.cross_entropy(fused, y)
    kd_terms = {f"kd_s{i}": kd(z, fused, T) for i, z in enumerate(logits)}       # fused -> each student
    kd_terms["kd_fused"] = kd(fused, torch.stack(logits).mean(0), T)            # students' mean -> fused
    return ce, kd_terms


def eval_heads(logits, fused):
    heads = {f"s{i}": z for i, z in enumerate(logits)}
    heads["ens"] = torch.stack([z.float().softmax(1) for z in logits]).mean(0).log()
    heads["fused"] = fused
    return heads


# ==================================================================================================
# Method
# ==================================================================================================

class FFL(nn.Module):
    """Students + a fusion module. Subclasses change `fusion_maps` (what is fused) or `loss` (how it teaches)."""

    def __init__(self, students, fusion_module, T=3.0, rampup=80, detach_fusion_input=False, fusion_wd=1e-5):
        super().__init__()
        self.students = nn.ModuleList(students)
        self.fusion_module = fusion_module
        self.T, self.rampup, self.fusion_wd = T, rampup, fusion_wd
        self.detach_fusion_input = detach_fusion_input
        self.kd_weight = ramp_up(0, rampup)

    def fusion_maps(self, features):
        """What the fusion module sees: each student's last feature map (pre-pool, after the final ReLU)."""
        return [f[-1] for f in features]

    def heads(self, x):
        logits, features = zip(*(net(x) for net in self.students))
        if self.detach_fusion_input:
            features = [[f.detach() for f in fs] for fs in features]
        return list(logits), self.fusion_module(self.fusion_maps(features))

    def forward(self, views, y=None):
        x = views[0] if self.training else views
        logits, fused = self.heads(x)
        if not self.training:
            return eval_heads(logits, fused)
        return self.loss(logits, fused, y, x)

    def loss(self, logits, fused, y, x):
        ce, kd_terms = fusion_losses(logits, fused, y, self.T)
        total = sum(ce.values()) + self.kd_weight * sum(kd_terms.values())
        return total, {**ce, **kd_terms}

    def set_epoch(self, epoch, epochs):
        self.kd_weight = ramp_up(epoch, self.rampup)

    def param_groups(self, args):
        # everything that is not a student (fusion module, FEFR's refiners) is the fusion branch: its own wd
        in_students = {id(p) for p in self.students.parameters()}
        fusion = [p for p in self.parameters() if p.requires_grad and id(p) not in in_students]
        return [dict(params=list(self.students.parameters())), dict(params=fusion, weight_decay=self.fusion_wd)]

    def export(self):
        import common
        return {f"s{i}": common.backbone_payload(net) for i, net in enumerate(self.students)}


# ==================================================================================================
# Flags and entry point
# ==================================================================================================

def add_fusion_arguments(parser):
    parser.add_argument("--fusion-wd", type=float, default=1e-5, help="weight decay of the fusion branch")
    parser.add_argument("--detach-fusion-input", action="store_true",
                        help="stop the fused classifier's gradients at the students' feature maps")


def add_arguments(parser):
    parser.set_defaults(T=3.0)
    parser.add_argument("--rampup", type=float, default=80, help="epochs R of the KD ramp-up w(e) (0: off)")
    add_fusion_arguments(parser)


def check_fusion_args(args):
    import common
    if args.students < 2:
        raise common.UsageError(f"feature fusion needs at least 2 students, got --students {args.students}")
    if args.fusion_wd < 0 or getattr(args, "rampup", 0) < 0:
        raise common.UsageError("--fusion-wd and --rampup must be non-negative")


def build(args, data):
    import common
    check_fusion_args(args)
    students = common.build_students(args, data.num_classes)
    shapes = feature_shapes(students, data.train_x.shape[1:])
    fusion_module = FusionModule([s[-1][0] for s in shapes], data.num_classes)
    return FFL(students, fusion_module, args.T, args.rampup, args.detach_fusion_input, args.fusion_wd)


def main(argv=None):
    import common
    return common.main("ffl", add_arguments, build, argv, __doc__)


if __name__ == "__main__":
    main()
