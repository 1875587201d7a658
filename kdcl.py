# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""KDCL: Online Knowledge Distillation via Collaborative Learning.

Paper: Qiushan Guo, Xinjiang Wang, Yichao Wu, Zhipeng Yu, Ding Liang, Xiaolin Hu, Ping Luo, "Online Knowledge
Distillation via Collaborative Learning", CVPR 2020. The paper links no official code; this file follows the paper
alone.

    python kdcl.py --arch resnet32,wrn_16_2 --students 2                  # CIFAR-100, General, one view each
    python kdcl.py --arch resnet32,wrn_16_2 --ensemble minlogit --no-icl  # MinLogit, one view for all
    python kdcl.py --dataset synthetic --arch resnet20 --epochs 2         # CPU demo

Idea. Like DML, m students of any architectures train together from scratch, but instead of copying each
other they all distil from one soft target built on the fly by *ensembling* their outputs with the help of
the label: the best student per sample (Naive), the best convex combination of logits (Linear), the
element-wise most confident logits (MinLogit), or a weighted average of probabilities whose weights minimise
the ensemble's error on a held-out set (General). With invariant collaborative learning (ICL) every student
sees its own random augmentation of the same images, so the shared target also fuses several views.

Loss (Eq. 1-2), teacher z_t built from the students' detached logits (a constant):

    ce_s<i> = CE(z_i, y)
    kd_s<i> = lambda * kd(z_i, z_t, T)                                         --lambda-kd, --T
    loss = sum_i (ce_s<i> + kd_s<i>),  kd(z_s, z_t, T) = T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batchmean
    Naive    (Eq. 4)     z_t = z_k,  k = argmin_i CE(z_i, y)                          --ensemble naive
    Linear   (Eq. 5)     z_t = sum_i a_i z_i,  a = argmin_{a in simplex} CE(sum_i a_i z_i, y)   linear
    MinLogit (Eq. 6-7)   z_t = min_i (z_i - z_i^y)   element-wise over the students   minlogit
    General  (Eq. 8-11)  p_t = sum_i w_i softmax(z_i/T),  w = C^-1 1 / (1^T C^-1 1),  general (default)
                         C_ij = mean_{x in hold-out} (f_i(x) - 1)(f_j(x) - 1),  f_i = student i's p(true class)
    ICL: student i's logits z_i come from its own augmented view (--icl, default) or all from one (--no-icl).

Picture (two students; [v] = v detached: a target, no gradient flows back through it):

    x_0 --> s0 --> z_0 --+--> CE(z_0, y) ............................ ce_s0
                         '--> lambda kd(z_0, [z_t], T) .............. kd_s0
    x_1 --> s1 --> z_1 --+--> CE(z_1, y) ............................ ce_s1
                         '--> lambda kd(z_1, [z_t], T) .............. kd_s1
    [z_0], [z_1], y (General: w) --> ensemble (--ensemble; no_grad, float32) --> z_t (General: log p_t)
    x_i: student i's own view (--icl) or one view for all (--no-icl). General's w is estimated after each
    epoch on the held-out images, students in eval mode, under no_grad (estimate_weights).

Recipe (CIFAR-100, ResNet-32 + WRN-16-2), RECIPES["paper"] below, each value with its source: Sec. 4.2's 200
epochs, batch 128, SGD momentum 0.9, lr 0.1 x0.1 at epochs 100 and 150, wd 5e-4, crop (pad 4) + flip, T = 2,
lambda = 1, General on 50 held-out images per class, no warm-up on CIFAR (--lr-warmup 0); accuracy = the median
of 5 runs. The paper names no Nesterov (--no-nesterov) and no padding fill (zeros):

    python kdcl.py --recipe paper
    python scripts/reproduce.py --paper kdcl --table 7       # Table 7's rows, 5 seeds (the paper's median of 5)

ImageNet (ResNet-50 + ResNet-18, Table 2), Sec. 4.1: batch 2048, wd 1e-4, lr from 0.1 warmed up linearly to
0.8 over 5 epochs, 200 epochs, x0.1 at 60, 120, 180, 20 held-out images per class (the photometric distortion is
not implemented here): RECIPES["paper-imagenet"]:

    python kdcl.py --recipe paper-imagenet --data-dir DIR                   # add --ensemble linear for 77.8 / 73.1

Decisions where the paper is silent:
- Naive picks the best student per sample (Eq. 4 could also be read per batch).
- Linear: one weight vector a per batch (Eq. 5's CE over the batch), solved at T = 1 and softened at T
  afterwards. Solver: 30 steps of projected gradient on the simplex, each step trying 16 step sizes at once
  and keeping the best (never worse than the current point): fixed work, no host synchronisation; tested to
  reach the optimum within 1e-3 in CE against a brute-force simplex grid. (With --compile the 30 steps are
  unrolled: a longer one-off compile.)
- General: f_i is measured at T = 1 with the students in eval mode on the clean hold-out images, after every
  epoch (w starts at 1/m, as in the paper); the soft target averages the students' distributions at T.
  Eq. 11 only enforces sum(w) = 1, but the paper also asks w_i in [0, 1] (and negative weights could make the
  averaged "distribution" negative). So: Eq. 11 is used whenever it is non-negative; otherwise the exact
  minimiser of Eq. 9 on the simplex is taken (Eq. 11 on the best subset of students). A ridge of 1e-6 x
  mean(diag C) guards a singular C (identical students get equal weights). The held-out images are removed
  from training for --ensemble general only; --holdout-per-class sets their number.
- Defaults --ensemble general --icl: the paper's best CIFAR setting (Table 7: 74.3 / 75.5).
- Several GPUs (torchrun, common.py's loop): General's w is estimated by rank 0 after each epoch and shared,
  so every process distils from the same w; Linear solves its weights on each process's share of the batch
  (per process, not per global batch), as Naive and MinLogit pick per sample anyway. The paper's ImageNet
  batch of 2048 is the global --batch-size.

Contract (in short; the full statement is common.py's module docstring; this file needs only torch, so it can
be copied alone):
    student   nn.Module with forward(x) -> (logits, [stage outputs, shallow to deep]), checked when built
              (common.as_student(model) makes one of any torchvision classifier)
    training  loss, parts = method(views, y): views = one augmented batch per student (num_views = K, --icl) or
              [x]; parts {ce_s<i>, kd_s<i>}, each weighted (kd_s<i> includes lambda), loss = their sum
    eval      method(x) -> {s0, s1, ..., ens}: logits of each student, ens = log of their mean softmax
    weights   General's w: method.estimate_weights([(x, y), ...]) on held-out batches after each epoch (common's
              loop does it in epoch_end); never called, w stays at the paper's start 1/K. Exports OUT/s<i>.pt.

Results: the README's table 'Results measured with this code' (same recipe for every method, vanilla beside it).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ==================================================================================================
# Loss
# ==================================================================================================

def kd_to_distribution(z_s, log_p_t, T):
    """kd_loss with the teacher given as log-probabilities at T (General's mixture of distributions)."""
    log_p_s = F.log_softmax(z_s.float() / T, dim=1)
    return T * T * F.kl_div(log_p_s, log_p_t.detach().float(), reduction="batchmean", log_target=True)


# ==================================================================================================
# Teachers: logits (K, B, C) of the K students, labels y (B,)
# ==================================================================================================

def naive(logits, y):
    """Eq. 4, per sample: the logits of the student with the smallest cross-entropy. -> (B, C)"""
    K, B, C = logits.shape
    ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(K), reduction="none").view(K, B)
    best = ce.argmin(0)  # first student on ties
    return logits.gather(0, best.view(1, B, 1).expand(1, B, C)).squeeze(0)


def project_simplex(v):
    """Euclidean projection of each row of v (M, K) onto the probability simplex (sort-based)."""
    u = v.sort(dim=1, descending=True).values
    css = u.cumsum(1) - 1
    k = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    rho = (u - css / k > 0).sum(1, keepdim=True)  # the positive part is a prefix of the sorted row
    return (v - css.gather(1, rho - 1) / rho).clamp_min(0)


def linear_weights(logits, y, steps=30):
    """Eq. 5: a on the simplex minimising CE(sum_i a_i z_i, y) over the batch. -> (K,)"""
    K, B, C = logits.shape
    z = logits.float()
    z_y = z.gather(2, y.view(1, B, 1).expand(K, B, 1)).squeeze(2)  # (K, B)
    onehot = F.one_hot(y, C).float()
    etas = 2.0 ** torch.arange(-12, 4, device=z.device, dtype=z.dtype)  # step sizes tried at once

    def batch_ce(a):  # (M, K) candidate weights -> (M,) mean CE; CE is linear-in-a minus logsumexp
        s = torch.einsum("mk,kbc->mbc", a, z)
        return (s.logsumexp(2) - a @ z_y).mean(1)

    a = torch.full((K,), 1.0 / K, device=z.device, dtype=z.dtype)
    for _ in range(steps):
        p = torch.einsum("k,kbc->bc", a, z).softmax(1)
        g = torch.einsum("kbc,bc->k", z, p - onehot) / B  # dCE/da
        g = g - g.mean()
        cand = project_simplex(a - etas[:, None] * g / g.abs().max().clamp_min(1e-12))
        cand = torch.cat([a[None], cand])  # keeping the current point makes every step a descent
        a = cand[batch_ce(cand).argmin()]
    return a


def linear(logits, y):
    """Eq. 5: the best convex combination of the students' logits. -> (B, C)"""
    return torch.einsum("k,kbc->bc", linear_weights(logits, y), logits.float())


def min_logit(logits, y):
    """Eq. 6-7: shift each student's logits so the target-class logit is 0, element-wise min. -> (B, C)"""
    K, B, C = logits.shape
    shifted = logits - logits.gather(2, y.view(1, B, 1).expand(K, B, 1))  # Eq. 6: z - z^c
    return shifted.min(0).values  # Eq. 7


def general_weights(p_true, ridge=1e-6):
    """Eq. 8-11: p_true (K, N) = each student's probability of the true class on the hold-out set -> w (K,).
    Eq. 11 when it is non-negative, else the minimiser of w^T C w on the simplex (Eq. 11 on the best support)."""
    e = p_true.double() - 1  # Eq. 8: f_i(x) - t, t = 1
    K, N = e.shape
    C = e @ e.T / N  # Eq. 10
    C = C + (ridge * C.diagonal().mean() + 1e-12) * torch.eye(K, dtype=C.dtype, device=C.device)
    best, best_err = None, math.inf
    supports = [list(range(K))] + [[i for i in range(K) if m >> i & 1] for m in range(2 ** K - 2, 0, -1)]
    for S in supports:
        v = torch.linalg.solve(C[S][:, S], torch.ones(len(S), dtype=C.dtype, device=C.device))
        w = torch.zeros(K, dtype=C.dtype, device=C.device)
        w[S] = v / v.sum()  # Eq. 11
        if bool((w >= 0).all()):
            err = float(w @ C @ w)  # Eq. 9
            if err < best_err:
                best, best_err = w, err
            if len(S) == K:  # the unconstrained optimum is feasible: it is the answer
                break
    return best.float()


def general(logits, w, T):
    """The General soft target: log(sum_i w_i softmax(z_i/T)), as log-probabilities. -> (B, C)"""
    log_p = F.log_softmax(logits.float() / T, dim=2)
    return torch.logsumexp(log_p + w.float().log().view(-1, 1, 1), dim=0)


LOGIT_TEACHERS = {"naive": naive, "linear": linear, "minlogit": min_logit}


# ==================================================================================================
# Method
# ==================================================================================================

class KDCL(nn.Module):
    def __init__(self, students, *, ensemble="general", icl=True, T=2.0, lambda_kd=1.0, image_size=(32, 32)):
        super().__init__()
        if len(students) < 2:
            raise ValueError(f"KDCL needs at least two students to ensemble, got {len(students)}")
        if ensemble not in ("general", *LOGIT_TEACHERS):
            raise ValueError(f"unknown ensemble '{ensemble}'; choose general, {', '.join(LOGIT_TEACHERS)}")
        for s in students:
            stage_shapes(s, image_size)  # the contract, checked once
        self.students = nn.ModuleList(students)
        self.ensemble, self.icl, self.T, self.lambda_kd = ensemble, icl, T, lambda_kd
        self.num_views = len(students) if icl else 1  # ICL: one augmented view per student
        K = len(students)
        # General's w (Eq. 11), checkpointed with the model; logged as w0, w1, ...
        self.register_buffer("ensemble_weights", torch.full((K,), 1.0 / K))

    def forward(self, views, y=None):
        if not self.training:
            logits = [s(views)[0] for s in self.students]
            return {**{f"s{i}": z for i, z in enumerate(logits)}, "ens": ensemble_head(logits)}
        logits = [s(views[i if self.icl else 0])[0] for i, s in enumerate(self.students)]
        # the soft target is a constant (Eq. 3), computed in float32 even under bf16 autocast
        with torch.no_grad(), torch.autocast(views[0].device.type, enabled=False):
            z = torch.stack([z.float() for z in logits])
            if self.ensemble == "general":  # log-probabilities at T
                teacher = general(z, self.ensemble_weights, self.T)
            else:                           # logits
                teacher = LOGIT_TEACHERS[self.ensemble](z, y)
        parts = {}
        for i, z_i in enumerate(logits):  # Eq. 2
            to_mixture = self.ensemble == "general"
            kd = kd_to_distribution(z_i, teacher, self.T) if to_mixture else kd_loss(z_i, teacher, self.T)
            parts[f"ce_s{i}"] = F.cross_entropy(z_i.float(), y)
            parts[f"kd_s{i}"] = self.lambda_kd * kd
        return sum(parts.values()), parts

    @torch.no_grad()
    def estimate_weights(self, batches):
        """General (Eq. 8-11): w from held-out (x, y) batches of normalised images; returns {"w0": ...} to log."""
        was_training = self.training
        self.eval()
        p_true = [torch.stack([s(x)[0].float().softmax(1).gather(1, y[:, None]).squeeze(1) for s in self.students])
                  for x, y in batches]
        self.ensemble_weights.copy_(general_weights(torch.cat(p_true, dim=1).cpu()).to(self.ensemble_weights))
        self.train(was_training)
        return {f"w{i}": float(v) for i, v in enumerate(self.ensemble_weights)}

    def epoch_end(self, epoch, data, batch_size=None):
        """common.py's hook: General re-estimates w on the images data.hold_out() set aside."""
        if self.ensemble != "general":
            return {}
        return self.estimate_weights(data.holdout_batches(batch_size))

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
        "paper, Table 7 (the pair; General + ICL, its best)": dict(
            arch="resnet32,wrn_16_2", students=2, ensemble="general", icl=True),
        "paper, Sec. 4.2 (CIFAR training details)": dict(
            dataset="cifar100", epochs=200, batch_size=128, lr=0.1, momentum=0.9, wd=5e-4, milestones="100,150",
            lr_warmup=0, augment="crop+flip", T=2.0, lambda_kd=1.0, holdout_per_class=50),
        "project (the paper names momentum, not Nesterov)": dict(nesterov=False),
    },
    "paper-imagenet": {
        "paper, Table 2 (the pair)": dict(arch="resnet50,resnet18", students=2),
        "paper, Sec. 4.1 (ImageNet training details)": dict(
            dataset="imagenet", epochs=200, batch_size=2048, lr=0.8, lr_warmup=5, lr_warmup_start=0.125, momentum=0.9,
            wd=1e-4, milestones="60,120,180", holdout_per_class=20),
        "project (the paper names momentum, not Nesterov)": dict(nesterov=False),
    },
}


def add_arguments(parser):
    parser.recipes = RECIPES  # for common.main's --recipe
    import argparse
    parser.set_defaults(T=2.0)  # the paper's CIFAR temperature
    parser.add_argument("--ensemble", default="general", choices=["naive", "linear", "minlogit", "general"],
                        help="how the soft target is built from the students (Eq. 4, 5, 7, 11)")
    parser.add_argument("--icl", action=argparse.BooleanOptionalAction, default=True,
                        help="invariant collaborative learning: each student gets its own augmented view")
    parser.add_argument("--lambda-kd", type=float, default=1.0, help="lambda, the weight of the kd term (Eq. 2)")
    parser.add_argument("--holdout-per-class", type=int, default=50,
                        help="General only: training images per class held out to estimate the weights w")


def build(args, data):
    import common
    if args.students < 2:
        raise common.UsageError(f"KDCL needs at least two students to ensemble, got --students {args.students}")
    if args.lambda_kd < 0:
        raise common.UsageError(f"--lambda-kd must be non-negative, got {args.lambda_kd}")
    if args.ensemble == "general":
        if args.holdout_per_class < 1:
            raise common.UsageError("--ensemble general needs --holdout-per-class of at least 1 "
                                    "to estimate its weights")
        data.hold_out(args.holdout_per_class)  # these images are never trained on
    return KDCL(common.build_students(args, data), ensemble=args.ensemble, icl=args.icl, T=args.T,
                lambda_kd=args.lambda_kd, image_size=tuple(data.image_size))


def main(argv=None):
    try:
        import common
    except ModuleNotFoundError as e:  # copied alone: the method needs only torch, its script needs common.py
        raise SystemExit("error: kdcl.py trains through common.py, which is not beside it: run it from a clone of "
                         "the repository, or use KDCL in your own training loop (README)") if e.name == "common" else e
    return common.main("kdcl", add_arguments, build, argv, __doc__)


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
