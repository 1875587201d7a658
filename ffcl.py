# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""FFCL: feature fusion-based collaborative learning, peers taught by a fused classifier, by each other and by
their own pre-trained copies.

Paper: Yiting Li, Liyuan Sun, Jianping Gou, Lan Du, Weihua Ou, "Feature fusion-based collaborative learning for
knowledge distillation", International Journal of Distributed Sensor Networks 17(11), 2021,
doi:10.1177/15501477211057037. The authors released no code.

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

Loss (one backward; K peers, z_f the fused logits, z_i^pre the frozen pre-trained copy of peer i,
kd(s, t, T) = T^2 KL(softmax(t/T) || softmax(s/T)) with the teacher t detached; each line is one logged part,
the loss is their sum; the paper's sections "Fused feature-based collaborative distillation" (FK, RK),
"Network regularization-based distillation" (NRK) and "FFCL loss" (their sum; "FFCL extension" for K > 2);
equation numbers not available):

    ce_s<i>  = CE(z_i, y)
    fk_s<i>  = l_f kd(z_i, z_f, T)                        (FK)   --lambda-feature, --T (3)
    rk_s<i>  = l_r 1/(K-1) sum_{j!=i} kd(z_i, z_j, T_r)   (RK)   --lambda-response, --T-resp (1)
    nrk_s<i> = l_n kd(z_i, z_i^pre, T_n)                  (NRK)  --lambda-reg, --T-reg (3)
    ce_fused = CE(z_f, y)
    kd_fused = kd(z_f, mean_i z_i, T)

Picture (two peers; F_i = peer i's map at --fusion-stage, the last by default; [v] = v detached):

    x --+--> s0 --> z_0 ----------------------------+--> CE(z_0, y) ...................... ce_s0
        |    '----> F_0 ---.                        +--> l_f kd(z_0, [z_f], T) ........... fk_s0
        |                  |                        +--> l_r kd(z_0, [z_1], T_r) ......... rk_s0
        |                  |                        '--> l_n kd(z_0, [z_0^pre], T_n) ..... nrk_s0
        +--> s1 --> z_1 ---|------------------------+--> likewise ...... ce_s1, fk_s1, rk_s1, nrk_s1
        |    '----> F_1 ---+
        |                  v
        |     fusion_module(F_0, F_1) --> z_f ------+--> CE(z_f, y) ...................... ce_fused
        |                                           '--> kd(z_f, [mean_i z_i], T) ........ kd_fused
        '--> frozen pre-trained copies (eval mode, no_grad, outside the optimizer) --> z_0^pre, z_1^pre
    ce_fused and kd_fused reach the peers through F_i, unless FK is off or --detach-fusion-input: [F_i].

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

Recipe (CIFAR-100), RECIPES["paper"] below, each value with its source: SGD momentum 0.9 and wd 5e-4 are stated
for every experiment; 200 epochs, batch 128, lr 0.1 "divided at the 60th, 120th, and 160th epochs" are stated for
the baselines (by how much is not: /10 is ours, --gamma 0.1; assumed for FFCL, whose own schedule the text does
not give), which are also the pre-training; ResNet18 pair (Table 5); mean of three runs; no Nesterov, no warm-up
named (--no-nesterov, --lr-warmup 0):

    python ffcl.py --recipe paper                      # resnet18 x2, pre-trained first for 200 epochs
    python scripts/reproduce.py --paper ffcl           # (its tables' numbers are not in the text we have)

(without a warm-up the response term makes the peers collapse in their first steps, README 'Learning-rate
warm-up'; drop --lr-warmup 0 to keep the default 5 epochs)

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

Contract (in short; the full statement is common.py's module docstring; this file needs only torch, so it can
be copied alone):
    student   nn.Module with forward(x) -> (logits, [stage outputs, shallow to deep]), checked when built
              (common.as_student(model) makes one of any torchvision classifier)
    training  loss, parts = method([x], y): parts {ce_s<i>, ce_fused, kd_fused, fk_s<i>, rk_s<i>, nrk_s<i>}, each
              weighted (fk by l_f, rk by l_r, nrk by l_n), loss = their sum
    eval      method(x) -> {s0, s1, ..., ens, fused}: ens = log of the peers' mean softmax, fused = z_f
    weights   none depends on the epoch (no set_epoch). The frozen copies (`pretrained`, one per peer) only teach.
              SGD groups: method.param_groups() (fusion module with its own weight decay). Exports OUT/s<i>.pt.

Results: the README's table 'Results measured with this code' (same recipe for every method, vanilla beside it).
"""
import argparse

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
    return [sum(kd_loss(z_i, z_j, T) for j, z_j in enumerate(logits) if j != i) / (K - 1)
            for i, z_i in enumerate(logits)]


# ==================================================================================================
# Method
# ==================================================================================================

class FFCL(nn.Module):
    num_views = 1

    def __init__(self, students, num_classes, *, pretrained=None, fusion_stage=-1, T=3.0, T_resp=1.0, T_reg=3.0,
                 lambda_feature=1.0, lambda_response=1.0, lambda_reg=1.0, detach_fusion_input=False, fusion_wd=1e-5,
                 image_size=(32, 32)):
        super().__init__()
        if len(students) < 2:
            raise ValueError(f"feature fusion needs at least 2 students, got {len(students)}")
        if lambda_reg and (pretrained is None or len(pretrained) != len(students)):
            raise ValueError("the regularization knowledge needs one pre-trained copy per peer (pretrained=[...]), "
                             "or lambda_reg=0")
        shapes = [stage_shapes(s, image_size) for s in students]
        if not all(-len(s) <= fusion_stage < len(s) for s in shapes):
            raise ValueError(f"fusion stage {fusion_stage} is not a stage of every peer "
                             f"(they have {', '.join(str(len(s)) for s in shapes)} stages)")
        self.students = nn.ModuleList(students)
        self.fusion_module = FusionModule([s[fusion_stage][0] for s in shapes], num_classes)
        self.teachers = Frozen(pretrained) if lambda_reg else None
        self.fusion_stage, self.T, self.T_resp, self.T_reg, self.fusion_wd = fusion_stage, T, T_resp, T_reg, fusion_wd
        self.lambda_feature, self.lambda_response, self.lambda_reg = lambda_feature, lambda_response, lambda_reg
        # without feature knowledge the fused classifier is only a probe: its gradients never reach the peers
        self.detach_fusion_input = detach_fusion_input or lambda_feature == 0

    def logits(self, x):
        """The peers' logits and the fused classifier's, on the peers' maps of stage `fusion_stage`."""
        logits, features = zip(*(s(x) for s in self.students))
        maps = [f[self.fusion_stage] for f in features]
        return list(logits), self.fusion_module([m.detach() for m in maps] if self.detach_fusion_input else maps)[0]

    def forward(self, views, y=None):
        x = views[0] if self.training else views
        logits, z_f = self.logits(x)
        if not self.training:
            return {**{f"s{i}": z for i, z in enumerate(logits)}, "ens": ensemble_head(logits), "fused": z_f}
        parts = {f"ce_s{i}": F.cross_entropy(z.float(), y) for i, z in enumerate(logits)}
        parts["ce_fused"] = F.cross_entropy(z_f.float(), y)
        parts["kd_fused"] = kd_loss(z_f, torch.stack(logits).mean(0), self.T)  # fused: kd from the peers' mean
        if self.lambda_feature:                                      # FK: the fused classifier teaches peer i
            parts.update({f"fk_s{i}": self.lambda_feature * kd_loss(z, z_f, self.T) for i, z in enumerate(logits)})
        if self.lambda_response:                                     # RK: DML between peers at T_resp
            rk = response_kd(logits, self.T_resp)
            parts.update({f"rk_s{i}": self.lambda_response * term for i, term in enumerate(rk)})
        if self.lambda_reg:                                          # NRK: the frozen pre-trained self teaches
            parts.update({f"nrk_s{i}": self.lambda_reg * kd_loss(z, z_pre, self.T_reg)
                          for i, (z, z_pre) in enumerate(zip(logits, self.teachers(x)))})
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
        "paper, Table 5 (ablation on a ResNet18 pair, CIFAR-100)": dict(
            arch="resnet18", students=2, dataset="cifar100"),
        "paper, 'Data sets and settings' (every experiment)": dict(momentum=0.9, wd=5e-4),
        "paper, 'Baselines' (stated for the baselines, the peers' pre-training; assumed for FFCL)": dict(
            epochs=200, batch_size=128, lr=0.1, milestones="60,120,160", pretrain_epochs=200),
        "project (the paper names neither Nesterov nor a warm-up)": dict(nesterov=False, lr_warmup=0),
    },
}


def add_arguments(parser):
    parser.recipes = RECIPES  # for common.main's --recipe
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
    a("--fusion-wd", type=float, default=1e-5, help="weight decay of the fusion module")
    a("--detach-fusion-input", action="store_true",
      help="stop the fused classifier's gradients at the peers' feature maps")


def pretrain(args, data, arch_names):
    """Train fresh peers alone, on one-hot labels, into OUT/pretrain, a folder of the run that is continued where
    it stopped (by --resume, or by the same command again); return them, loaded."""
    import os
    import common
    out_dir = os.path.join(args.out_dir, "pretrain")
    pre = argparse.Namespace(**{**vars(args), "epochs": args.pretrain_epochs, "out_dir": out_dir,
                                "resume": os.path.exists(os.path.join(out_dir, "last.pt")),
                                "tensorboard": args.tensorboard and os.path.join(args.tensorboard, "pretrain")})
    settings = common.derive_settings(pre)  # milestones as fractions of the pre-training
    print(f"ffcl: pre-training {args.students} peers for {args.pretrain_epochs} epochs -> {out_dir}")
    with common.RunFolder(pre, settings, "vanilla", nested=True) as run:
        common.fit(common.Vanilla(common.build_students(args, data)), data, pre, settings, run)
    return [common.load_backbone(os.path.join(out_dir, f"s{i}.pt"), arch, data.num_classes)
            for i, arch in enumerate(arch_names)]


def build(args, data):
    import common
    if args.students < 2:
        raise common.UsageError(f"feature fusion needs at least 2 students, got --students {args.students}")
    if args.fusion_wd < 0:
        raise common.UsageError("--fusion-wd must be non-negative")
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
    students, archs = common.build_students(args, data), common.student_archs(args)
    stages = [len(stage_shapes(s, tuple(data.image_size))) for s in students]
    if not all(-n <= args.fusion_stage < n for n in stages):
        raise common.UsageError(f"--fusion-stage {args.fusion_stage} is not a stage of every peer "
                                f"({', '.join(f'{a}: {n} stages' for a, n in zip(archs, stages))})")
    pretrained = None
    if args.regularization and args.pretrained:
        paths = [p.strip() for p in args.pretrained.split(",")]
        if len(paths) != args.students:
            raise common.UsageError(f"--pretrained lists {len(paths)} files but --students is {args.students}")
        pretrained = [common.load_backbone(p, arch, data.num_classes) for p, arch in zip(paths, archs)]
    elif args.regularization:
        pretrained = pretrain(args, data, archs)
    return FFCL(students, data.num_classes, pretrained=pretrained, fusion_stage=args.fusion_stage, T=args.T,
                T_resp=args.T_resp, T_reg=args.T_reg, lambda_feature=args.lambda_feature * args.feature,
                lambda_response=args.lambda_response * args.response,
                lambda_reg=args.lambda_reg * args.regularization, detach_fusion_input=args.detach_fusion_input,
                fusion_wd=args.fusion_wd, image_size=tuple(data.image_size))


def main(argv=None):
    try:
        import common
    except ModuleNotFoundError as e:  # copied alone: the method needs only torch, its script needs common.py
        raise SystemExit("error: ffcl.py trains through common.py, which is not beside it: run it from a clone of "
                         "the repository, or use FFCL in your own training loop (README)") if e.name == "common" else e
    return common.main("ffcl", add_arguments, build, argv, __doc__)


# ==================================================================================================
# Shared with the other method files: the same text in each (test_methods.py checks it), so that
# every file can be copied alone
# ==================================================================================================

def kd_loss(z_s, z_t, T):
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean, in float32; the teacher z_t is detached."""
    log_p_s = F.log_softmax(z_s.float() / T, dim=1)
    log_p_t = F.log_softmax(z_t.detach().float() / T, dim=1)
    return T * T * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


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
