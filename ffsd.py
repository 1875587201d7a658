# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""FFSD: Feature Fusion and Self-Distillation for online knowledge distillation.

Paper: Shaojie Li, Mingbao Lin, Yan Wang, Yongjian Wu, Yonghong Tian, Ling Shao, Rongrong Ji, "Distilling a
Powerful Student Model via Online Knowledge Distillation", IEEE Transactions on Neural Networks and Learning
Systems (TNNLS), 2022 (arXiv:2103.14473). Official code (PyTorch): https://github.com/SJLeo/FFSD

    python ffsd.py --dataset synthetic --epochs 2 --arch resnet20 --students 3  # CPU demo (default: leader + 2 common)

Idea. A *leader* (student 0, the one network kept: OUT/leader.pt, a plain backbone) learns from the classifier and map
that a fusion module makes of the last feature maps of N-1 *common* students of its architecture. These learn from each
other (DML) and are pushed apart: a one-way chain shifts each one's attention off its predecessor's strongest regions.
*Self-distillation* (SD) modules (last-layer map -> shallower stage outputs) carry the fused map and the shift down.

Loss, one logged part a line of the picture: att(F) = mean_c F^2 flattened (Eq. 7), att~ = att normalised; d(a, b) =
mean((a/|a| - b/|b|)^2); kd(z_s, z_t, T) = T^2 KL(softmax(z_t/T) || softmax(z_s/T)), T = --T; F3 = a network's last
stage output, F_l the shallower ones. Diversity target of s_k: y = att~(F3_(k-1)), n = |att(F3_(k-1))|, thr = the
floor(HW/3)-th smallest y, y' = (n/2 - y) sign(y - thr) + n/2 (Eq. 8); SD input F3' = F3_(k-1) + (y' - y) n / C,
broadcast over channels. w_div, w_fus, w_sd = the ramped (w: Decisions) --lambda-div, --lambda-fusion, --lambda-sd.

Picture (s_k = students[k], k = 1..N-1, leader L = students[0]; [v] = v detached; SD_o(...) in a term: a target):

    x --+--> s_k --> z_k --+--> CE(z_k, y) ......................................................... Eq. 2-3 ce_s<k>
        |    |             '--> 1/(N-2) sum_{common j != k} kd(z_k, [z_j], T)   (N >= 3) .................. kd_s<k>
        |    +----> F3_k -----> w_div mean((att~(F3_k) - y'([F3_(k-1)]))^2)   (k >= 2) ......... Eq. 8-9 div_s<k>
        |    '----> F_l^k ----> w_div sum_l d(att(F_l^k), att(SD_sk(F3'([F3_(k-1)]))))   (k >= 2) . Eq. 11 sdt_s<k>
        |   fusion_module([F3_1], ..., [F3_(N-1)]) -> z_f, fused map H_f --+--> CE(z_f, y) ...... Eq. 4 ce_fused
        |                                                                   '--> kd(z_f, [mean_k z_k], T) kd_fused
        '--> L ---> z_L ---+--> CE(z_L, y) ......................................................... Eq. 14 ce_leader
             |             '--> lambda_kl kd(z_L, [z_f], T) ............................................ kd_leader
             +----> F3_L --+--> w_fus d(att(F3_L), att([H_f])) .................................. Eq. 5 att_leader
             |             '--> w_fus d(att(adapter(F3_L)), att([F3_1, ..., F3_(N-1)])) ........ Eq. 5 adapt_leader
             '----> F_l^L ----> w_fus sum_l d(att(F_l^L), att(SD_L([H_f]))) ..................... Eq. 13 sdt_leader
    SD_o, o = L, s2, ...: w_sd sum_l [d(G_l, [F_l^o]) + d(att(G_l), att([F_l^o]))], G = SD_o([F3_o]) Eq. 10 sd_<o>

Recipes: RECIPES below, each value under its source (Sec. IV-A; the official code where the paper is silent); no
lr warm-up on CIFAR (--lr-warmup 0: the common students can then collapse in their first steps and drag the leader
with them, README 'Learning-rate warm-up'; the project's default is 5). The official code differs: fusion module wd
1e-5 (our --fusion-wd default; the paper's: 1e-4), epochs 1 to 299 (ImageNet: 1 to 89), and in ImageNetTrainer.py
lr 0.1 (its options' default; its README's command sets none) warmed up over the first epochs, /10 at 30, 60 and 80:

    python ffsd.py --recipe paper                        # resnet32, leader + 2 common students, T = 2
    python scripts/reproduce.py --paper ffsd --table I   # 3 seeds, best epoch: Table I's statistic, Ens included
    python ffsd.py --recipe paper-imagenet --data-dir DIR       # ResNet-18; --arch resnet34 for the other row

Decisions where the paper is silent or the official code departs from it (we follow the code):
- Eq. 5: the paper writes feature-map distances; the code compares normalised attention maps, for both the
  fused-map term and the adapter (DW3x3-BN-ReLU-PW1x1 C->(N-1)C-BN-ReLU, training-only) term. Attention maps here.
- One backward (the code steps each network's optimizer in turn): all cross-network targets are detached, so each
  parameter gets exactly the code's gradient, and the fused classifier never trains the common students. SD modules are
  applied with BatchNorm in eval mode (running statistics) under no_grad, and trained after the networks' update, on
  that step's features in train mode, by Eq. 10 alone, with their own Adam (--sd-lr, --sd-wd) on the SGD's lr schedule.
- Weights the paper leaves open: the SD target losses' (the picture's); lambda_kl (= 1, --lambda-kl), listed without
  naming its term and absent from the code, weights the leader's kd to z_f (Eq. 14 has two weights).
- --rampup W is the paper's "warm-up" of the lambdas (the lr has its own, --lr-warmup): w(lambda) = lambda *
  exp(-5 (1 - e/W)^2) for epochs e = 1..W, counted from 1 as the official loop does (start_epoch = 1, so epoch 1
  trains at exp(-3.2) = 0.04), lambda afterwards; lambda_sd too, as in the code, the KL terms not; 0 turns it off.
- SD blocks: ConvTranspose2d(k3, stride s = the size ratio, p1, output_padding s-1, no bias)-BN-ReLU per stage
  step (CIFAR: 64x8x8 -> 32x16x16 -> 16x32x32), channels read off the backbone (the code assumes halving). thr's
  index: max(floor(HW/3), 1), for 1-2 pixel maps. kd_fused's teacher: the common students' mean logits (the code's).
- The paper's "Ens" (Table I) is head `any` (common.py: right when any common student is), not `ens`: the
  official ensemble_accuracy adds the students' boolean "correct" tensors, an oracle's bound, not an ensemble.

Contract (in short; the full statement is common.py's module docstring; this file needs only torch, so it can
be copied alone):
    student   nn.Module with forward(x) -> (logits, [stage outputs, shallow to deep]), checked when built
              (common.as_student(model) makes one of any torchvision classifier); students[0] is the leader
    training  loss, parts = method([x], y): parts {the picture's}, each weighted, loss = their sum
    eval      method(x) -> {leader, s1, ..., ens, fused}: ens = log mean softmax of the common students; best.pt: leader
    weights   method.set_epoch(e) before epoch e (from 0) ramps the lambdas (never called: the full lambdas). SGD
              over method.param_groups(), Adam over method.extra_optimizer() (SD modules). Exports OUT/leader.pt.

Results: the README's table 'Results measured with this code' (same recipe for every method, vanilla beside it).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ==================================================================================================
# Modules
# ==================================================================================================

def adapter_block(cin, cout):
    """Eq. 5's adapter: depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (FFL's fusion block), He init."""
    block = nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                          nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
    for conv in (block[0], block[3]):
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return block


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


class SelfDistillation(nn.Module):
    """Rebuild the shallower stage outputs from the last one: a ConvTranspose2d-BN-ReLU block per stage step.
    channels/sizes: the backbone's stage outputs, shallow to deep. forward(F_last) -> maps shallow to deep."""

    def __init__(self, channels, sizes):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in reversed(range(len(channels) - 1)):  # from stage i + 1 back to stage i
            s = sizes[i] // sizes[i + 1]
            self.blocks.append(nn.Sequential(
                nn.ConvTranspose2d(channels[i + 1], channels[i], 3, s, 1, output_padding=s - 1, bias=False),
                nn.BatchNorm2d(channels[i]), nn.ReLU()))

    def forward(self, x):
        outs = [x := block(x) for block in self.blocks]  # each block takes the one before's output
        return outs[::-1]


# ==================================================================================================
# Loss: small pure functions, in float32
# ==================================================================================================

def attention(f):
    """Eq. 7: mean over channels of the squared activations, flattened to (B, HW)."""
    return f.float().pow(2).mean(1).flatten(1)


def norm_mse(a, b):
    """mean((a/|a| - b/|b|)^2) with each sample flattened: the attention / feature distance of Eq. 5, 10, 11."""
    return (F.normalize(a.float().flatten(1), dim=1) - F.normalize(b.float().flatten(1), dim=1)).pow(2).mean()


def diversity_target(att_prev):
    """Eq. 8's y' (the module docstring's Loss): regions above thr (task-relevant) get n - y, weak regions keep y."""
    att_prev = att_prev.float().flatten(1)
    n = att_prev.norm(dim=1, keepdim=True)
    y = F.normalize(att_prev, dim=1)
    thr = y.kthvalue(max(y.shape[1] // 3, 1), dim=1, keepdim=True).values
    return (n / 2 - y) * torch.sign(y - thr) + n / 2


def diversity_loss(att_k, att_prev):
    """Eq. 9: mean((att_k/|att_k| - y')^2) against the predecessor's shifted (detached) attention."""
    return (F.normalize(att_k.float().flatten(1), dim=1) - diversity_target(att_prev.detach())).pow(2).mean()


def shifted_features(f_prev):
    """The diversity target as a feature map (SD input): F + (y' - y) n / C, broadcast over channels."""
    b, c, h, w = f_prev.shape
    att = attention(f_prev)
    n, y = att.norm(dim=1, keepdim=True), F.normalize(att, dim=1)
    return f_prev.float() + ((diversity_target(att) - y) * n / c).view(b, 1, h, w)


@torch.no_grad()
def sd_targets(sd_module, x):
    """Apply an SD module as a fixed teacher: BN in eval mode, no gradient (official code)."""
    mode = sd_module.training
    outs = sd_module.eval()(x)
    sd_module.train(mode)
    return outs


def attention_transfer(feats, targets):
    """Eq. 11 / 13: sum over the shallower stages of d(att(F_l), att(target_l))."""
    return sum(norm_mse(attention(f), attention(t)) for f, t in zip(feats, targets))


# ==================================================================================================
# Method
# ==================================================================================================

class FFSD(nn.Module):
    primary_head = "leader"
    num_views = 1

    def __init__(self, students, num_classes, *, T=2.0, lambda_div=1e-5, lambda_fusion=10.0, lambda_sd=1000.0,
                 lambda_kl=1.0, rampup=5, fusion_wd=1e-5, sd_lr=1e-3, sd_wd=1e-4, image_size=(32, 32)):
        super().__init__()
        if len(students) < 2:
            raise ValueError("FFSD needs a leader and at least one common student")
        shapes = [stage_shapes(s, image_size) for s in students]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("FFSD's leader and common students must have the same stage shapes (one architecture)")
        self.students = nn.ModuleList(students)  # students[0] = leader, students[1:] = common students
        # head `any` (common.py): the paper's "Ens" (utils/util.py), the leader not in it (CIFARTrainer.py: self.models)
        self.any_correct_heads = [f"s{k}" for k in range(1, len(students))]
        self.T, self.lambda_kl, self.rampup = T, lambda_kl, rampup
        self.lambda_div, self.lambda_fusion, self.lambda_sd = lambda_div, lambda_fusion, lambda_sd
        self.fusion_wd, self.sd_lr, self.sd_wd = fusion_wd, sd_lr, sd_wd
        # w(lambda) for (div, fusion, sd) this epoch: the full lambdas until set_epoch says otherwise
        self.register_buffer("ramped_lambdas", torch.tensor([lambda_div, lambda_fusion, lambda_sd]), persistent=False)
        channels, sizes = [c for c, _, _ in shapes[0]], [h for _, h, _ in shapes[0]]
        c, num_common = channels[-1], len(students) - 1
        self.fusion_module = FusionModule([c] * num_common, num_classes)
        self.adapter = adapter_block(c, c * num_common)  # Eq. 5: leader F3 -> the students' concatenated F3
        self.sd_modules = nn.ModuleDict({name: SelfDistillation(channels, sizes)  # leader, s2, s3, ... (diversified)
                                         for name in ["leader"] + [f"s{k}" for k in range(2, len(students))]})
        rebuilt = sd_targets(self.sd_modules["leader"], torch.zeros(1, *shapes[0][-1]))
        if [tuple(r.shape[1:]) for r in rebuilt] != shapes[0][:-1]:
            raise ValueError(f"FFSD's self-distillation module cannot rebuild the stage outputs of "
                             f"{getattr(students[0], 'arch', type(students[0]).__name__)} (stage sizes {sizes})")

    def set_epoch(self, epoch):
        e = epoch + 1  # the official loop counts epochs from 1
        ramp = math.exp(-5 * (1 - min(e, self.rampup) / self.rampup) ** 2) if self.rampup > 0 else 1.0
        lambdas = (self.lambda_div, self.lambda_fusion, self.lambda_sd)
        self.ramped_lambdas.copy_(torch.tensor([lam * ramp for lam in lambdas]))

    def forward(self, views, y=None):
        x = views[0] if self.training else views
        logits, feats = zip(*[s(x) for s in self.students])
        n = len(self.students)
        common_f3 = [f[-1].detach() for f in feats[1:]]  # detached: the fusion module never trains them
        z_f, fused_map = self.fusion_module(common_f3)
        if not self.training:
            heads = {"leader": logits[0], **{f"s{k}": logits[k] for k in range(1, n)}}
            return {**heads, "ens": ensemble_head(logits[1:]), "fused": z_f}

        parts, T = {}, self.T
        w_div, w_fusion, w_sd = self.ramped_lambdas
        # common students: CE + DML among themselves (Eq. 2-3), diversity chain (Eq. 9, 11)
        for k in range(1, n):
            parts[f"ce_s{k}"] = F.cross_entropy(logits[k].float(), y)
            if n > 2:
                parts[f"kd_s{k}"] = sum(kd_loss(logits[k], logits[j], T) for j in range(1, n) if j != k) / (n - 2)
            if k >= 2:
                prev = feats[k - 1][-1].detach()
                parts[f"div_s{k}"] = w_div * diversity_loss(attention(feats[k][-1]), attention(prev))
                targets = sd_targets(self.sd_modules[f"s{k}"], shifted_features(prev))
                parts[f"sdt_s{k}"] = w_div * attention_transfer(feats[k][:-1], targets)
        # fused classifier (Eq. 4)
        parts["ce_fused"] = F.cross_entropy(z_f.float(), y)
        parts["kd_fused"] = kd_loss(z_f, torch.stack(logits[1:]).mean(0), T)
        # leader (Eq. 5, 13, 14)
        fused_map = fused_map.detach()
        parts["ce_leader"] = F.cross_entropy(logits[0].float(), y)
        parts["kd_leader"] = self.lambda_kl * kd_loss(logits[0], z_f, T)
        parts["att_leader"] = w_fusion * norm_mse(attention(feats[0][-1]), attention(fused_map))
        adapted = attention(self.adapter(feats[0][-1]))
        parts["adapt_leader"] = w_fusion * norm_mse(adapted, attention(torch.cat(common_f3, 1)))
        targets = sd_targets(self.sd_modules["leader"], fused_map)
        parts["sdt_leader"] = w_fusion * attention_transfer(feats[0][:-1], targets)
        # SD modules learn to rebuild their own network's shallower maps (Eq. 10); nothing else trains them
        for name in self.sd_modules:
            k = 0 if name == "leader" else int(name[1:])
            rebuilt, own = self.sd_modules[name](feats[k][-1].detach()), [f.detach() for f in feats[k][:-1]]
            parts[f"sd_{name}"] = w_sd * sum(norm_mse(g, f) + norm_mse(attention(g), attention(f))  # Eq. 10
                                             for g, f in zip(rebuilt, own))
        return sum(parts.values()), parts

    def param_groups(self):
        own = {id(p) for p in self.sd_modules.parameters()} | {id(p) for p in self.fusion_module.parameters()}
        return [dict(params=[p for p in self.parameters() if id(p) not in own]),
                dict(params=list(self.fusion_module.parameters()), weight_decay=self.fusion_wd)]

    def extra_optimizer(self):
        return torch.optim.Adam(self.sd_modules.parameters(), lr=self.sd_lr, weight_decay=self.sd_wd)

    def export(self):
        """{"leader": the leader as plain data (student_payload)}: a run's OUT/leader.pt; needs only torch."""
        return {"leader": student_payload(self.students[0])}


# ==================================================================================================
# Flags and entry point
# ==================================================================================================

# --recipe NAME (common.main): a paper's settings as flag defaults (a flag given explicitly still wins), each
# value once, under its source: the paper, the official code, or this project where both are silent
RECIPES = {
    "paper": {
        "paper, Table I (ResNet-32)": dict(arch="resnet32"),
        "paper, Sec. IV-A (implementation details; a leader and 2 common students)": dict(
            students=3, dataset="cifar100", epochs=300, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, wd=1e-4,
            milestones="150,225", lr_warmup=0, fusion_wd=1e-4, sd_lr=1e-3, sd_wd=1e-4, T=2.0),
        "paper, Sec. IV-A (grid-searched on ResNet-32, below Table I)": dict(
            lambda_div=1e-5, lambda_fusion=10.0, lambda_sd=1000.0, lambda_kl=1.0),
        "official code, data/cifar100.py": dict(augment="crop+flip", pad_mode="reflect"),
        "official code, CIFARTrainer.py (lambda_warmup)": dict(rampup=5),
    },
    "paper-imagenet": {
        "paper, Table III (ResNet-18)": dict(arch="resnet18"),
        "paper, Sec. IV-A (implementation details; a leader and 2 common students)": dict(
            students=3, dataset="imagenet", epochs=90, batch_size=256, lr=0.8, momentum=0.9, nesterov=True, wd=1e-4,
            milestones="30,60", lr_warmup=5, fusion_wd=1e-4, sd_lr=1e-3, sd_wd=1e-4, T=2.0),
        "paper, Sec. IV-A (grid-searched on CIFAR-100, applied to every data set)": dict(
            lambda_div=1e-5, lambda_fusion=10.0, lambda_sd=1000.0, lambda_kl=1.0),
        "official code, ImageNetTrainer.py (lambda_warmup)": dict(rampup=5),
    },
}


def add_arguments(parser):
    parser.recipes = RECIPES  # for common.main's --recipe
    parser.set_defaults(T=2.0, students=3)  # the paper: a leader and two common students
    a = parser.add_argument
    a("--lambda-div", type=float, default=1e-5, help="lambda_div: diversity loss and its SD transfer (Eq. 9, 11)")
    a("--lambda-fusion", type=float, default=10.0, help="lambda_fusion: leader's fused-map terms (Eq. 5, 13)")
    a("--lambda-sd", type=float, default=1000.0, help="lambda_sd: SD module reconstruction loss (Eq. 10)")
    a("--lambda-kl", type=float, default=1.0, help="lambda_kl: leader's kd to the fused classifier (Eq. 14)")
    a("--rampup", type=int, default=5, help="epochs of exp(-5(1-e/W)^2) ramp on lambda_div/fusion/sd (0: off)")
    a("--sd-lr", type=float, default=1e-3, help="Adam learning rate of the SD modules")
    a("--sd-wd", type=float, default=1e-4, help="Adam weight decay of the SD modules")
    a("--fusion-wd", type=float, default=1e-5, help="weight decay of the fusion module")


def build(args, data):
    import common
    if args.students < 2:
        raise common.UsageError(f"FFSD needs --students 2 or more (a leader and common students), got {args.students}")
    if len(set(common.student_archs(args))) > 1:
        raise common.UsageError(f"FFSD trains one architecture for the leader and every common student, "
                                f"got --arch {args.arch}")
    for flag in ("lambda_div", "lambda_fusion", "lambda_sd", "lambda_kl", "sd_wd", "fusion_wd"):
        if getattr(args, flag) < 0:
            raise common.UsageError(f"--{flag.replace('_', '-')} must be non-negative")
    if args.rampup < 0 or args.sd_lr <= 0:
        raise common.UsageError("--rampup must be non-negative and --sd-lr positive")
    return FFSD(common.build_students(args, data), data.num_classes, T=args.T,
                lambda_div=args.lambda_div, lambda_fusion=args.lambda_fusion, lambda_sd=args.lambda_sd,
                lambda_kl=args.lambda_kl, rampup=args.rampup, fusion_wd=args.fusion_wd, sd_lr=args.sd_lr,
                sd_wd=args.sd_wd, image_size=tuple(data.image_size))


def main(argv=None):
    try:
        import common
    except ModuleNotFoundError as e:  # copied alone: the method needs only torch, its script needs common.py
        raise SystemExit("error: ffsd.py trains through common.py, which is not beside it: run it from a clone of "
                         "the repository, or use FFSD in your own training loop (README)") if e.name == "common" else e
    return common.main("ffsd", add_arguments, build, argv, __doc__)


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
