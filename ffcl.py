"""FFCL — Feature Fusion-based Collaborative Learning for Knowledge Distillation (IJDSN 2021).

Paper: papers/ffcl_feature_fusion_collaborative_learning.txt (no official code). Needs ffl.py beside it
(`FusionModule`, `kd`, `fusion_losses`, the `FFL` class): copy both files together.

    python common.py --arch resnet18 --students 2 --out-dir runs/base          # peers alone, one-hot labels
    python ffcl.py --arch resnet18 --pretrained runs/base/s0.pt,runs/base/s1.pt
    python ffcl.py --arch resnet18 --pretrain-epochs 200                        # pre-trains them first
    python ffcl.py --dataset synthetic --arch resnet20 --epochs 1 --pretrain-epochs 1   # CPU demo

Idea. Peers learn from each other with three kinds of knowledge: (a) feature knowledge (FK) — the peers'
feature maps are concatenated and fused by FFL's fusion module into a fused classifier that teaches every
peer and is taught by the peers' mean; (b) response knowledge (RK) — DML between peers at temperature 1;
(c) network-regularization knowledge (NRK) — each peer is first pre-trained alone with one-hot labels and
its frozen copy then teaches it (Tf-KD self-training), so a weak peer cannot drag the other one down.
The peers of the collaborative stage start from scratch ("all networks are trained from scratch").

Loss (one backward; K peers, z_f the fused logits, z_i^pre the frozen pre-trained copy of peer i):

    peer i:  CE(z_i, y) + l_f kd(z_i, z_f, T)                        (FK)   --lambda-feature, --T (3)
                        + l_r 1/(K-1) sum_{j!=i} kd(z_i, z_j, T_r)   (RK)   --lambda-response, --T-resp (1)
                        + l_n kd(z_i, z_i^pre, T_n)                  (NRK)  --lambda-reg, --T-reg (3)
    fused:   CE(z_f, y) + kd(z_f, mean_i z_i, T)

Ablation (the paper's Table 5, ResNet18 pair; RK / FK / NRK kept):
    A  RK FK NRK   (default)
    B     FK NRK   --no-response
    C  RK    NRK   --no-feature
    D  RK FK       --no-regularization
    E  RK          --no-feature --no-regularization
    F     FK       --no-response --no-regularization
    G        NRK   --no-feature --no-response
Without FK the fusion module still trains, on detached features, so the `fused` head is reported as a probe
that never touches the peers. Without NRK no pre-training is needed (and --pretrained is refused).

Paper recipe (CIFAR-10/100): SGD 0.9, wd 5e-4, 200 epochs, batch 128, lr 0.1 /10 at 60, 120, 160, mean of
three runs; peers resnet18/34, WRN-28-10, ShuffleNet, also mixed pairs; the baselines (= the pre-training)
use the same recipe:

    python ffcl.py --arch resnet18 --epochs 200 --batch-size 128 --wd 5e-4 --milestones 60,120,160 \
        --no-nesterov --pretrain-epochs 200

Decisions where the paper is silent:
- Weights and temperatures are not in the text: every term weight 1, T = 3 for FK and NRK, T = 1 for RK
  (stated in the paper). Tf-KD's own code uses (1-a) CE + a T^2 KL with a = 0.95, T = 6.
- Where the features come from: the paper "extracts features from the middle layers" and cites FFL for the
  fusion, whose module (Fig. 2: DW conv, PW conv, pooling, classifier) is FFL's. Read as "the feature
  layers, not the output layer": the last stage's maps (pre-pool), as FFL does. `--fusion-stage -2` fuses
  the second-to-last stage instead.
- The fusion module's input is not detached (FFL's code); `--detach-fusion-input` for the other reading.
- No ramp-up (the paper names none); fusion module weight decay 1e-5 as in FFL (`--fusion-wd`).
- Frozen copies: no gradients, always in eval mode (BN running statistics), outside the optimizer, saved in
  the checkpoint (for --resume) but not exported. `--pretrain-epochs N` trains fresh peers with the vanilla
  loop into OUT/pretrain (its s0.pt, s1.pt are reusable with --pretrained); --resume reuses them.

Results measured with this code (2-core x86-64 CPU, torch 2.14.1, 2026-11-24): real CIFAR-10 (the JPEG
copy in ../shared/data), a class-balanced 4,000-image training subset and 2,000 test images, resnet20
students, 6 epochs, batch 64, lr 0.1 x0.1 at epochs 3 and 4; mean ± std over seeds 0 and 1 of the
final-epoch top-1 (%):
    ffcl     s0 24.90 ± 5.44, s1 21.65 ± 4.74, ens 25.80 ± 2.12, fused 27.17 ± 2.44
    vanilla  s0 47.45 ± 1.91, s1 46.27 ± 3.71, ens 48.77 ± 0.74
    best student 26.88 vs vanilla 48.85 (-21.97)
Command (README, 'Results'):
    python scripts/compare.py --methods vanilla,dml,kdcl,ffl,ffcl,fefr,ffsd,mkb_cl --seeds 0,1 \
        --arch resnet20 --students 2 --dataset folder --data-dir CIFAR10_JPEG --limit-train 4000 \
        --limit-test 2000 --epochs 6 --batch-size 64 --extra ffl=--rampup=2 --extra fefr=--rampup=2 \
        --extra "ffsd=--students=3 --warmup=1"
FFCL loses to vanilla here: its peer-to-peer (DML, T = 1) and fused-classifier terms have no ramp-up, so
in the first epochs the peers copy untrained peers (see dml.py). Its regularization term alone helps at
once: case G (--no-feature --no-response, seed 0, same data and schedule) ends at s0 47.60 / s1 51.20
against vanilla's 46.10 / 48.90 for that seed.
"""
import argparse

import torch
import torch.nn as nn

from ffl import FFL, FusionModule, add_fusion_arguments, check_fusion_args, feature_shapes, fusion_losses, kd


# ==================================================================================================
# Modules
# ==================================================================================================

class Frozen(nn.Module):
    """Pre-trained copies that only teach: no gradients, and eval mode whatever train() is asked for."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.nets.requires_grad_(False)
        self.train(False)

    def train(self, mode=True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, x):
        return [net(x)[0] for net in self.nets]


# ==================================================================================================
# Loss
# ==================================================================================================

def response_kd(logits, T):
    """DML among the peers: peer i learns from each other peer j (detached), averaged over the K-1 of them."""
    K = len(logits)
    return [sum(kd(z_i, z_j, T) for j, z_j in enumerate(logits) if j != i) / (K - 1)
            for i, z_i in enumerate(logits)]


# ==================================================================================================
# Method
# ==================================================================================================

class FFCL(FFL):
    def __init__(self, students, fusion_module, pretrained=None, fusion_stage=-1, T=3.0, T_resp=1.0, T_reg=3.0,
                 lambda_feature=1.0, lambda_response=1.0, lambda_reg=1.0, detach_fusion_input=False, fusion_wd=1e-5):
        # without feature knowledge the fused classifier is only a probe: its gradients never reach the peers
        super().__init__(students, fusion_module, T=T, rampup=0, fusion_wd=fusion_wd,
                         detach_fusion_input=detach_fusion_input or lambda_feature == 0)
        self.teachers = Frozen(pretrained) if lambda_reg else None
        self.fusion_stage, self.T_resp, self.T_reg = fusion_stage, T_resp, T_reg
        self.lambda_feature, self.lambda_response, self.lambda_reg = lambda_feature, lambda_response, lambda_reg

    def fusion_maps(self, features):
        return [f[self.fusion_stage] for f in features]

    def loss(self, logits, fused, y, x):
        ce, fusion_kd = fusion_losses(logits, fused, y, self.T)
        parts = {**ce, "kd_fused": fusion_kd["kd_fused"]}           # fused: CE + kd from the peers' mean
        total = sum(ce.values()) + fusion_kd["kd_fused"]
        if self.lambda_feature:                                      # FK: the fused classifier teaches peer i
            for i in range(len(logits)):
                parts[f"fk_s{i}"] = fusion_kd[f"kd_s{i}"]
                total = total + self.lambda_feature * parts[f"fk_s{i}"]
        if self.lambda_response:                                     # RK: DML between peers at T_resp
            for i, term in enumerate(response_kd(logits, self.T_resp)):
                parts[f"rk_s{i}"] = term
                total = total + self.lambda_response * term
        if self.lambda_reg:                                          # NRK: the frozen pre-trained self teaches
            for i, (z, z_pre) in enumerate(zip(logits, self.teachers(x))):
                parts[f"nrk_s{i}"] = kd(z, z_pre, self.T_reg)
                total = total + self.lambda_reg * parts[f"nrk_s{i}"]
        return total, parts


# ==================================================================================================
# Flags and entry point
# ==================================================================================================

def add_arguments(parser):
    parser.set_defaults(T=3.0)  # --T: temperature of the feature (fusion) knowledge
    a = parser.add_argument
    a("--T-resp", type=float, default=1.0, help="temperature of the response knowledge between peers")
    a("--T-reg", type=float, default=3.0, help="temperature of the regularization knowledge")
    a("--lambda-feature", type=float, default=1.0, help="weight of kd(z_i, z_f)")
    a("--lambda-response", type=float, default=1.0, help="weight of the peers' mutual kd")
    a("--lambda-reg", type=float, default=1.0, help="weight of kd(z_i, z_i^pre)")
    a("--feature", action=argparse.BooleanOptionalAction, default=True, help="feature knowledge (FK)")
    a("--response", action=argparse.BooleanOptionalAction, default=True, help="response knowledge (RK)")
    a("--regularization", action=argparse.BooleanOptionalAction, default=True,
      help="network-regularization knowledge (NRK) from frozen pre-trained copies")
    a("--pretrained", default=None, help="comma list of backbones saved by the vanilla run, one per peer")
    a("--pretrain-epochs", type=int, default=0, help="pre-train the peers alone for N epochs first")
    a("--fusion-stage", type=int, default=-1, help="which stage output is fused (-1: last, FFL's choice)")
    add_fusion_arguments(parser)


def pretrain(args, data, arch_names):
    """Train fresh peers with one-hot labels into OUT/pretrain (reused on --resume); return them loaded."""
    import copy
    import os
    import common
    out_dir = os.path.join(args.out_dir, "pretrain")
    paths = [os.path.join(out_dir, f"s{i}.pt") for i in range(args.students)]
    if not (args.resume and all(os.path.exists(p) for p in paths)):
        pre_args = copy.copy(args)
        pre_args.epochs, pre_args.out_dir = args.pretrain_epochs, out_dir
        pre_args.resume = args.resume and os.path.exists(os.path.join(out_dir, "last.pt"))  # interrupted
        pre_args = common.check_args(pre_args, "vanilla")  # milestones as fractions of the pre-training
        print(f"ffcl: pre-training {args.students} peers for {args.pretrain_epochs} epochs -> {out_dir}")
        common.fit(common.Vanilla(common.build_students(args, data.num_classes)), data, pre_args, out_dir)
    return [common.load_backbone(p, arch, data.num_classes) for p, arch in zip(paths, arch_names)]


def build(args, data):
    import common
    check_fusion_args(args)
    if not (args.feature or args.response or args.regularization):
        raise common.UsageError("every kind of knowledge is switched off; train independent peers with common.py")
    if args.regularization and not args.pretrained and args.pretrain_epochs < 1:
        raise common.UsageError("the regularization knowledge needs pre-trained peers: pass --pretrained "
                                "a.pt,b.pt or --pretrain-epochs N (or --no-regularization)")
    if args.pretrained and args.pretrain_epochs:
        raise common.UsageError("give either --pretrained or --pretrain-epochs, not both")
    if not args.regularization and (args.pretrained or args.pretrain_epochs):
        raise common.UsageError("--no-regularization uses no pre-trained peers; drop --pretrained/--pretrain-epochs")
    if min(args.T, args.T_resp, args.T_reg) <= 0 or min(args.lambda_feature, args.lambda_response, args.lambda_reg) < 0:
        raise common.UsageError("temperatures must be positive and --lambda-* weights non-negative")
    students = common.build_students(args, data.num_classes)
    shapes = feature_shapes(students, data.train_x.shape[1:])
    if not all(-len(s) <= args.fusion_stage < len(s) for s in shapes):
        raise common.UsageError(f"--fusion-stage {args.fusion_stage} is not a stage of every peer "
                                f"({', '.join(f'{a}: {len(s)} stages' for a, s in zip(args.archs, shapes))})")
    pretrained = None
    if args.regularization and args.pretrained:
        paths = [p.strip() for p in args.pretrained.split(",")]
        if len(paths) != args.students:
            raise common.UsageError(f"--pretrained lists {len(paths)} files but --students is {args.students}")
        pretrained = [common.load_backbone(p, arch, data.num_classes) for p, arch in zip(paths, args.archs)]
    elif args.regularization:
        pretrained = pretrain(args, data, args.archs)
    fusion_module = FusionModule([s[args.fusion_stage][0] for s in shapes], data.num_classes)
    return FFCL(students, fusion_module, pretrained, args.fusion_stage, args.T, args.T_resp, args.T_reg,
                args.lambda_feature * args.feature, args.lambda_response * args.response,
                args.lambda_reg * args.regularization, args.detach_fusion_input, args.fusion_wd)


def main(argv=None):
    import common
    return common.main("ffcl", add_arguments, build, argv, __doc__)


if __name__ == "__main__":
    main()
