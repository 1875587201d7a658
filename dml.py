# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""Deep Mutual Learning (DML): K students of any architectures teach each other while they train.

Paper: Ying Zhang, Tao Xiang, Timothy M. Hospedales, Huchuan Lu, "Deep Mutual Learning", CVPR 2018
(arXiv:1706.00384). Official code (TensorFlow): https://github.com/YingZhangDUT/Deep-Mutual-Learning

    python dml.py --arch resnet32 --students 2                      # CIFAR-100, the paper's ResNet-32 pair
    python dml.py --arch resnet32,wrn_16_2 --students 2             # mixed architectures
    python dml.py --dataset synthetic --arch resnet20 --epochs 2    # CPU demo

Idea. There is no pre-trained teacher. K students are trained together from scratch; besides the labels,
each student is pulled towards the class distribution its peers predict for the same image. The peers'
"dark knowledge" (how they spread probability over the wrong classes) acts as a data-dependent
regulariser, and every student ends up better than when trained alone, even the largest one.

Loss (student k of K, all on the same augmented batch; each line is one logged part). The paper's objective
for student k is L_Theta_k = L_C_k + 1/(K-1) sum_{l != k} D_KL(p_l || p_k): its cross-entropy plus the mean KL
divergence from each peer's prediction to its own (equation numbers not available):

    ce_s<k> = CE(z_k, y)                                                  # L_C_k
    kd_s<k> = 1/(K-1) * sum_{j != k} kd(z_k, z_j, T)                      # T = 1: the paper's D_KL(p_j || p_k)
    kd(z_s, z_t, T) = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))      # batchmean, z_t detached
    loss = sum_k (ce_s<k> + kd_s<k>) = sum_k L_Theta_k                    # one backward for all students

Picture (two students; [v] = v detached: a target, no gradient flows back through it):

    x --+--> s0 --> z_0 --+--> CE(z_0, y) ............ ce_s0
        |                 '--> kd(z_0, [z_1], T) ..... kd_s0
        '--> s1 --> z_1 --+--> CE(z_1, y) ............ ce_s1
                          '--> kd(z_1, [z_0], T) ..... kd_s1

Flags: --students K (>= 2), --arch (one name for all, or a comma list, one per student), --T (default 1: the
paper's plain KL(p_j || p_k)).

Recipe (CIFAR-100), RECIPES["paper"] below, each value with its source (--help lists them): the paper's SGD
Nesterov momentum 0.9, lr 0.1 divided by 10 every 60 epochs, 200 epochs, batch 64, T = 1, ResNet-32 pair; the
paper gives no weight decay (the project's 5e-4) and no warm-up (--lr-warmup 0):

    python dml.py --recipe paper          # resnet32 x2, --epochs 200 --batch-size 64 --milestones 60,120,180 ...
    python scripts/reproduce.py --paper dml      # DML's rows as KDCL, FFSD and MKB-CL print them, in their settings

(without a warm-up the students can collapse in their first steps, README 'Learning-rate warm-up'; add
--lr-warmup 5 for the project's default).

Decisions:
- One forward, one backward, peers detached. The paper updates the networks in turn (update theta_1,
  recompute the logits, update theta_2); like most PyTorch code we do one forward of every student, take the
  peers' detached logits as targets and one joint SGD step: student k's gradient is exactly the paper's
  dL_k/dtheta_k; only the "recompute after the peer's update" differs.
- Temperature: the paper uses none (T = 1); --T generalises it with the usual T^2 scaling.
- K >= 2 is required (with one student there is no peer); an --arch list is checked against --students by
  common.py.

Contract (in short; the full statement is common.py's module docstring; this file needs only torch, so it can
be copied alone):
    student   nn.Module with forward(x) -> (logits, [stage outputs, shallow to deep]), checked when built
              (common.as_student(model) makes one of any torchvision classifier)
    training  loss, parts = method([x], y): parts {ce_s<k>, kd_s<k>}, each weighted, loss = their sum
    eval      method(x) -> {s0, s1, ..., ens}: logits of each student, ens = log of their mean softmax
    weights   none depends on the epoch (no set_epoch); every student is exported as OUT/s<k>.pt

Results: the README's table 'Results measured with this code' (same recipe for every method, vanilla beside it).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ==================================================================================================
# Loss
# ==================================================================================================

def mutual_kd(logits, T):
    """For each student k: 1/(K-1) * sum_{j != k} kd(z_k, z_j, T), the peers as constant targets."""
    K = len(logits)
    return [sum(kd_loss(logits[k], logits[j], T) for j in range(K) if j != k) / (K - 1) for k in range(K)]


# ==================================================================================================
# Method
# ==================================================================================================

class DML(nn.Module):
    num_views = 1

    def __init__(self, students, *, T=1.0, image_size=(32, 32)):
        super().__init__()
        if len(students) < 2:
            raise ValueError(f"DML needs at least two students to learn from each other, got {len(students)}")
        for s in students:
            stage_shapes(s, image_size)  # the contract, checked once
        self.students = nn.ModuleList(students)
        self.T = T

    def forward(self, views, y=None):
        if not self.training:
            logits = [s(views)[0] for s in self.students]
            return {**{f"s{k}": z for k, z in enumerate(logits)}, "ens": ensemble_head(logits)}
        logits = [s(views[0])[0] for s in self.students]
        parts = {}
        for k, (z, kd_k) in enumerate(zip(logits, mutual_kd(logits, self.T))):
            parts[f"ce_s{k}"] = F.cross_entropy(z.float(), y)
            parts[f"kd_s{k}"] = kd_k
        return sum(parts.values()), parts

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
        "paper, Sec. 4 (CIFAR-100, ResNet-32 pairs)": dict(arch="resnet32", students=2, dataset="cifar100"),
        "paper, Sec. 4 (implementation details)": dict(
            epochs=200, batch_size=64, lr=0.1, momentum=0.9, nesterov=True, milestones="60,120,180", lr_warmup=0),
        "paper, Sec. 3 (KL between the peers' probabilities, no temperature)": dict(T=1.0),
        "project (the paper gives no weight decay)": dict(wd=5e-4),
    },
}


def add_arguments(parser):
    parser.recipes = RECIPES  # for common.main's --recipe
    parser.set_defaults(T=1.0)  # the paper's plain KL between the peers' probabilities


def build(args, data):
    import common
    if args.students < 2:
        raise common.UsageError(f"DML needs at least two students to learn from each other, "
                                f"got --students {args.students}")
    return DML(common.build_students(args, data), T=args.T, image_size=tuple(data.image_size))


def main(argv=None):
    try:
        import common
    except ModuleNotFoundError as e:  # copied alone: the method needs only torch, its script needs common.py
        raise SystemExit("error: dml.py trains through common.py, which is not beside it: run it from a clone of "
                         "the repository, or use DML in your own training loop (README)") if e.name == "common" else e
    return common.main("dml", add_arguments, build, argv, __doc__)


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
