# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""ONE: On-the-fly Native Ensemble, one network with several branches whose gated ensemble teaches each branch.

Paper: Xu Lan, Xiatian Zhu, Shaogang Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018
(arXiv:1806.04606). Official code (PyTorch): https://github.com/Lan1991Xu/ONE_NeurIPS2018

    python one.py --arch resnet32                                     # CIFAR-100, 3 branches on the last stage
    python one.py --arch resnet18 --branches 4 --branch-at 2          # 4 branches, each owning layer3 and layer4
    python one.py --dataset synthetic --arch resnet20 --epochs 2      # CPU demo

Idea. Instead of several students, ONE trains one network whose low-level stages (the *trunk*) are shared and
whose high-level stages are copied into m *branches*, each with its own classifier: every branch with the trunk
is a whole network. A small *gate* looks at the trunk's features and scores the branches per image; the
branches' logits weighted by those scores are the *teacher*, an ensemble built on the fly inside one network.
The teacher learns from the labels, and its softened prediction is distilled back into every branch. After
training any branch with the trunk is deployed alone, at the cost of one network; the rest can be dropped.

Loss (one backward; h = the trunk's output, z_i = branch i's logits (i = 0..m-1), g = gate(h) the m scores of
an image, z_e = sum_i g_i z_i the teacher; kd(s, t, T) = T^2 KL(softmax(t/T) || softmax(s/T)) with the teacher t
detached; each line is one logged part, the loss is their sum: the paper's objective, CE of every branch, CE of
the teacher and T^2 KL from the teacher to every branch, as its official code computes it; equation numbers not
available):

    ce_s<i>  = CE(z_i, y)                            each branch                                  (code: loss_cross)
    ce_gate  = CE(z_e, y)                            the gated teacher                            (code: loss_cross)
    kd_s<i>  = w(e) kd(z_i, z_e, T)                  the teacher teaches branch i, T = --T (3)    (code: loss_kl)
    g        = softmax(ReLU(BN(FC(GAP(h)))))         FC: C -> m, one score per branch             (code: control_v1)
    w(e)     = exp(-5 (1 - min(e, R)/R)^2)           R = --rampup (80), e = epoch from 0; w = 1 if never set

Picture (m = 3 branches; [v] = v detached: a target, no gradient flows back through it; w = w(e)):

                          .--> branch 0 --> z_0 --+--> CE(z_0, y) ........................... ce_s0
                          |                       '--> w kd(z_0, [z_e], T) .................. kd_s0
    x --> trunk --> h ----+--> branch 1 --> z_1 --+--> CE(z_1, y) ........................... ce_s1
                          |                       '--> w kd(z_1, [z_e], T) .................. kd_s1
                          +--> branch 2 --> z_2 --+--> CE(z_2, y), w kd(z_2, [z_e], T) ...... ce_s2, kd_s2
                          '--> gate --> g_0, g_1, g_2
                 z_e = g_0 z_0 + g_1 z_1 + g_2 z_2 --> CE(z_e, y) ............................ ce_gate
    trunk = stages 0..k-1 (one copy); branch i = its own stages k.. and classifier; k = --branch-at

Gradient flow: the gate learns from ce_gate alone (kd's teacher is detached); branch i from ce_s<i>, kd_s<i>
and, through z_e, ce_gate; the trunk from every part, through the branches and through the gate.

Official code recipe (CIFAR-100: scripts/ONE_ResNet32.sh over cifar_one.py's defaults): ResNet-32, 3 branches
on the last stage (layer3), 300 epochs, batch 128, SGD momentum 0.9 (no
Nesterov), lr 0.1 x0.1 at epochs 151 and 225, wd 1e-4, T = 3, ramp-up 80 epochs, no lr warm-up (--lr-warmup 0):
RECIPES["paper"] below. Reproduce with:

    python one.py --recipe paper                       # ResNet-32 (see below for ResNet-110)
    python scripts/reproduce.py --paper one --seeds 0,1,2        # beside the seed papers' ONE rows

(without a warm-up the branches can collapse in their first steps, README 'Learning-rate warm-up'; add
--lr-warmup 5 for the project's default). `--arch resnet110` is the CIFAR zoo's ResNet-110 of basic blocks, not
the official code's depth-110 network (ONE_ResNet110.sh), built of bottleneck blocks: no network here is that one.

ImageNet: the official code has none, so the schedule is ours, torchvision's reference ResNet recipe (90 epochs,
batch 256, lr 0.1 /10 at 30 and 60, wd 1e-4); ResNet-18 with 3 branches on its last stage (Res4, as KDCL's
Table 3 reimplements ONE), T = 3, no ramp-up (the paper's objective has none):

    python one.py --recipe paper-imagenet --data-dir DIR         # --arch resnet34 for FFSD's other row

Heads: s0 .. s<m-1> (branch i with the trunk, the deployable networks); gate (z_e, the gated teacher: FEFR's
"ONE-E"); ens (log of the branches' mean softmax, as for every method). best.pt follows s0 (primary_head).

Decisions where the paper is silent or the official code departs from it (we follow the code):
- The gate reads the trunk's output, the input the branches share (the paper: "the same input features as the
  branches"): global average pool (the code's AvgPool2d(16) on 16x16 maps), FC, BN, ReLU, softmax.
- Detach points as in the code: kd's teacher z_e is detached (`Variable(target.data)`); z_e is not detached in
  ce_gate, whose gradient reaches the gate, every branch and the trunk.
- The kd terms are ramped up, w(e) above (the code's sigmoid_rampup of its consistency_rampup, 80 in its
  scripts); the paper's objective has no ramp-up. --rampup 0 turns it off.
- The code adds 1e-7 to the teacher's probabilities inside its KL; omitted here.
- Branch point: --branch-at k, the first stage a branch owns, 1 <= k < the number of stages; default the last
  stage: layer3 of the code's ResNet-32 (3 stages), Res4 of KDCL's ResNet-18 (4 stages).
- Each branch (stages and classifier) comes from its own freshly built network, so the branches start apart, as
  the code's layer3_1..3 are initialised independently; the trunk is the first network's, the other trunks dropped.
- --branches is --students under ONE's name (one flag: the last given wins); one --arch for all branches.
- best.pt follows s0, as the code keeps the checkpoint of its first branch's best test accuracy.
- Not followed: the code's CIFAR normalisation (std 0.2023, 0.1994, 0.2010) and initialisation; the project's own.
- Exports: OUT/s<i>.pt, branch i with the trunk, a network of exactly the backbone's architecture (a zoo
  backbone loads with common.load_backbone); the gate and ens need every branch and are not exported.

Contract (in short; the full statement is common.py's module docstring; this file needs only torch, so it can
be copied alone):
    network   students: m >= 2 freshly built networks of one architecture, each with `stages` (a ModuleList run in
              order, the stem in stage 0) and `classifier` (the last stage's output -> logits), its forward(x)
              returning (logits, [stage outputs]) made by exactly those, which hold all its state (common.build_model's
              backbones do); checked when built. method.students: each branch with the trunk, as one network
    training  loss, parts = method([x], y): parts {ce_s<i>, ce_gate, kd_s<i>}, each weighted (kd_* by w(e)),
              loss = their sum
    eval      method(x) -> {s0, s1, ..., ens, gate}
    weights   method.set_epoch(e) before epoch e (from 0) sets w(e); never called: w = 1, the full weight.
              Exports OUT/s<i>.pt (method.export(), plain data).

Results: the README's table 'Results measured with this code' (same recipe for every method, vanilla beside it).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# ==================================================================================================
# Modules
# ==================================================================================================

class Gate(nn.Module):
    """The trunk's output -> global average pool -> FC (C -> m) -> BN -> ReLU -> softmax: m scores per image,
    summing to 1, that weight the branches' logits into the teacher."""

    def __init__(self, channels, branches):
        super().__init__()
        self.fc = nn.Linear(channels, branches)
        self.bn = nn.BatchNorm1d(branches)

    def forward(self, h):
        return F.relu(self.bn(self.fc(h.mean((2, 3))))).float().softmax(1)


class Branch(nn.Module):
    """One branch: its own stages from the branch point on, then its own classifier."""

    def __init__(self, stages, classifier):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.classifier = classifier

    def forward(self, h):
        for stage in self.stages:
            h = stage(h)
        return self.classifier(h)


class BranchWithTrunk(nn.Module):
    """Branch i with the trunk as one network, its parameters the method's (shared): forward(x) -> (logits, [stage
    outputs]), and a state_dict with the keys of the network it was cut from (stages.<j>..., classifier...)."""

    def __init__(self, trunk, branch):
        super().__init__()
        self.stages = nn.ModuleList([*trunk, *branch.stages])
        self.classifier = branch.classifier

    def forward(self, x):
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.classifier(x), features


@torch.no_grad()
def stage_structure(network, image_size):
    """stage_shapes(network), once `network` is checked to be cut where ONE cuts it: its forward's logits are what
    `stages`, run in order, and then `classifier` give, and those two hold all its state; else one sentence."""
    name = type(network).__name__
    stages, classifier = getattr(network, "stages", None), getattr(network, "classifier", None)
    if not isinstance(stages, (nn.ModuleList, nn.Sequential)) or not isinstance(classifier, nn.Module):
        raise TypeError(f"ONE cuts a network between two stages: it needs `stages` (a ModuleList run in order, the "
                        f"stem in stage 0) and `classifier` (the last stage's output -> logits), which {name} lacks")
    stray = sorted({key.split(".")[0] for key in network.state_dict()} - {"stages", "classifier"})
    if stray:
        raise TypeError(f"ONE copies a network's `stages` and `classifier`, but {name} also keeps state in "
                        f"{', '.join(stray)}; move it into a stage or the classifier")
    shapes = stage_shapes(network, image_size)
    mode, p = network.training, next(network.parameters())
    x = torch.randn(2, 3, *image_size, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    try:  # what ONE will run: the stages, then the classifier on the last one's output as it is (4-D)
        logits, h = network.eval()(x)[0], x
        for stage in stages:
            h = stage(h)
        out = classifier(h)
        if out.shape != logits.shape:
            raise ValueError(f"it gives {tuple(out.shape)}, forward's logits are {tuple(logits.shape)}")
        same = torch.allclose(out, logits, atol=1e-5)
    except Exception as e:  # e.g. a Linear classifier whose pooling is done in forward: a shape error
        raise TypeError(f"ONE runs {name}'s `stages` in order and then `classifier` on the last stage's output "
                        f"({'x'.join(map(str, shapes[-1]))} per image), which fails ({str(e).splitlines()[0][:150]}); "
                        f"make `classifier` do all forward does after the last stage, e.g. nn.Sequential("
                        f"nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(C, classes))") from None
    finally:
        network.train(mode)
    if not same or len(shapes) != len(stages):
        raise TypeError(f"{name}'s forward must run its `stages` in order, return each one's output and apply "
                        f"`classifier` to the last, so that a branch with the trunk is the network it was cut from")
    return shapes


# ==================================================================================================
# Loss
# ==================================================================================================

def gated_logits(logits, g):
    """The teacher z_e = sum_i g_i z_i, the branches' logits weighted per image by the gate's scores, in float32."""
    return (torch.stack([z.float() for z in logits], 1) * g.float().unsqueeze(2)).sum(1)


def one_loss(logits, z_e, y, T, w):
    """ONE's loss as weighted parts: CE of each branch and of the teacher z_e; w * kd from z_e to each branch."""
    parts = {f"ce_s{i}": F.cross_entropy(z.float(), y) for i, z in enumerate(logits)}
    parts["ce_gate"] = F.cross_entropy(z_e.float(), y)                               # trains gate, branches, trunk
    parts.update({f"kd_s{i}": w * kd_loss(z, z_e, T) for i, z in enumerate(logits)})  # z_e detached: the teacher
    return parts


# ==================================================================================================
# Method
# ==================================================================================================

class ONE(nn.Module):
    primary_head = "s0"
    num_views = 1

    def __init__(self, students, *, branch_at=None, T=3.0, rampup=80, image_size=(32, 32)):
        super().__init__()
        if len(students) < 2:
            raise ValueError(f"ONE needs at least 2 branches to ensemble, got {len(students)}")
        shapes = [stage_structure(s, image_size) for s in students]
        state = [[(k, v.shape) for k, v in s.state_dict().items()] for s in students]
        if any(s != shapes[0] for s in shapes) or any(s != state[0] for s in state):
            raise ValueError("ONE's branches are copies of one network: every student must have the same architecture")
        first, n = students[0], len(shapes[0])
        k = n - 1 if branch_at is None else branch_at
        if not 1 <= k < n:
            raise ValueError(f"the branch point (--branch-at) must be a stage from 1 to {n - 1} of "
                             f"{getattr(first, 'arch', type(first).__name__)} (its stages are 0 to {n - 1}), got {k}")
        self.branch_at, self.T, self.rampup = k, T, rampup
        self.trunk = nn.ModuleList(list(first.stages)[:k])  # shared; the other networks' trunks are dropped
        self.branches = nn.ModuleList(Branch(list(s.stages)[k:], s.classifier) for s in students)
        self.gate = Gate(shapes[0][k - 1][0], len(students))  # on the trunk's output: the branches' input
        self.register_buffer("kd_weight", torch.ones(()), persistent=False)  # w(e), full until set_epoch
        self.cut_from = {"module": type(first).__name__, "arch": getattr(first, "arch", None),  # what export() names
                         "num_classes": getattr(first, "num_classes", None),
                         "image_size": getattr(first, "image_size", 32)}

    @property
    def students(self):
        """Each branch with the trunk as one network (s0, s1, ...), sharing the method's parameters."""
        return [BranchWithTrunk(self.trunk, branch) for branch in self.branches]

    def set_epoch(self, epoch):
        self.kd_weight.fill_(ramp_up(epoch, self.rampup))

    def forward(self, views, y=None):
        h = views[0] if self.training else views
        for stage in self.trunk:  # once, for every branch
            h = stage(h)
        logits = [branch(h) for branch in self.branches]
        z_e = gated_logits(logits, self.gate(h))
        if not self.training:
            return {**{f"s{i}": z for i, z in enumerate(logits)}, "ens": ensemble_head(logits), "gate": z_e}
        parts = one_loss(logits, z_e, y, self.T, self.kd_weight)
        return sum(parts.values()), parts

    def export(self):
        """{"s<i>": branch i with the trunk as plain data}, readable with torch.load(path, weights_only=True): cut from
        a zoo backbone (one with .arch), it names what rebuilds it (common.load_backbone); cut from any other network,
        its state_dict loads into a fresh one of that class. Needs nothing but torch."""
        exported, info = {}, self.cut_from
        for i, network in enumerate(self.students):
            payload = {"kind": "student", "module": info["module"],
                       "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()}}
            if info["arch"] is not None:
                payload.update(kind="backbone", arch=info["arch"], num_classes=info["num_classes"],
                               image_size=info["image_size"])
            exported[f"s{i}"] = payload
        return exported


# ==================================================================================================
# Flags and entry point
# ==================================================================================================

# --recipe NAME (common.main): a paper's settings as flag defaults (a flag given explicitly still wins), each
# value once, under its source: the paper, the official code, or this project where both are silent
RECIPES = {
    "paper": {
        "official code, scripts/ONE_ResNet32.sh and cifar_one.py": dict(
            arch="resnet32", students=3, dataset="cifar100", epochs=300, batch_size=128, lr=0.1, momentum=0.9,
            nesterov=False, wd=1e-4, milestones="151,225", rampup=80.0),
        "official code, KLLoss (T = 3)": dict(T=3.0),
        "project (the code has no warm-up; the paper states none)": dict(lr_warmup=0),
    },
    "paper-imagenet": {
        "paper: KDCL (Guo et al., CVPR 2020), Table 3, ONE's '3 branches (Res4 block)'": dict(
            arch="resnet18", students=3, dataset="imagenet"),
        "official code, KLLoss (T = 3)": dict(T=3.0),
        "paper: ONE's objective has no ramp-up": dict(rampup=0.0),
        "project (no ImageNet script in the official code: torchvision's reference ResNet recipe)": dict(
            epochs=90, batch_size=256, lr=0.1, momentum=0.9, nesterov=False, wd=1e-4, milestones="30,60",
            lr_warmup=0),
    },
}


def add_arguments(parser):
    parser.recipes = RECIPES  # for common.main's --recipe
    a = parser.add_argument
    a("--branches", dest="students", type=int, metavar="M",
      help="m, the number of branches; each with the trunk is a student s<i> (--students under ONE's name)")
    a("--branch-at", type=int, default=None,
      help="the first stage (from 0) each branch owns a copy of; the trunk keeps the stages below it "
           "(default: the last stage)%(default).0s")
    a("--rampup", type=float, default=80.0, help="epochs R of the kd ramp-up w(e) (0: off)")
    parser.set_defaults(T=3.0, students=3)  # the code's KLLoss temperature and its three branches


def build(args, data):
    import common
    if args.students < 2:
        raise common.UsageError(f"ONE needs at least 2 branches to ensemble, got --branches {args.students}")
    if len(set(common.student_archs(args))) > 1:
        raise common.UsageError(f"ONE's branches are copies of one network: give one --arch, got {args.arch}")
    if args.rampup < 0:
        raise common.UsageError(f"--rampup must be non-negative, got {args.rampup:g}")
    return ONE(common.build_students(args, data), branch_at=args.branch_at, T=args.T, rampup=args.rampup,
               image_size=tuple(data.image_size))


def main(argv=None):
    try:
        import common
    except ModuleNotFoundError as e:  # copied alone: the method needs only torch, its script needs common.py
        raise SystemExit("error: one.py trains through common.py, which is not beside it: run it from a clone of "
                         "the repository, or use ONE in your own training loop (README)") if e.name == "common" else e
    return common.main("one", add_arguments, build, argv, __doc__)


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


if __name__ == "__main__":
    main()
