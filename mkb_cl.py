# SPDX-License-Identifier: MIT
# Copyright (c) 2026 The online-distillation reference authors
"""MKB-CL: collaborative learning with a mutual knowledge base.

Paper: Jinzhuo Wang, Wenmin Wang, Wen Gao, "Beyond Knowledge Distillation: Collaborative Learning for
Bidirectional Model Assistance", IEEE Access 6, 2018, doi:10.1109/ACCESS.2018.2854918. The authors released no
code.

    python mkb_cl.py --arch resnet32,wrn_16_2                            # CIFAR-100, one MKB after stage 1
    python mkb_cl.py --arch resnet32 --students 3 --mkb-at 1,2           # three networks, two MKBs
    python mkb_cl.py --dataset synthetic --arch resnet20 --epochs 2      # CPU demo

Idea. Two or more networks see the same batch. Between two of their stages sits a mutual knowledge base
(MKB). Each network owns one half of it: an encoder that brings the network's feature map X to a size
shared by all networks, a space transfer that maps it into a mutual space (the embedding), and a decoder
that maps the embedding M back to X's shape and routes it into the next stage. In the mutual space the
embeddings are pulled together (metric learning) and each one is classified by its own linear classifier
(verification), which keeps the space semantic. Each network keeps its half at test time, so a deployed
network is its backbone plus its half, runnable alone (`load_network`). Training is simultaneous with
siamese input, the paper's best setting (Fig. 4): one forward of every network, one backward.

Loss for network i (Eq. 1-2, 6): L_i = CE(z_i, y) + alpha * (L_metric_i + L_verification_i), alpha = --alpha (0.2);
L_metric_i = 1 - cos(e_i, mean_{j != i} e_j) (Eq. 4 line 1, Eq. 6), L_verification_i = CE(W_i e_i + b_i, y) (a linear
layer a half). One logged part a line of the picture, the last two summed over the MKBs; the loss is their sum.

Picture (two networks, one MKB after stage i; s0[..i] = stages 0 to i, s0[i+1..] the rest; [v] = v detached):

    x --+--> s0[..i] --> X_0 --> half_0 --> H_0 --> s0[i+1..] --> z_0 --> CE(z_0, y) ....... ce_s0
        |                         '-----> e_0 --+--> alpha (1 - cos(e_0, [e_1])) ........... metric_s0
        |                                       '--> alpha CE(W_0 e_0 + b_0, y) ............ verif_s0
        '--> s1[..i] --> X_1 --> half_1 --> H_1 --> s1[i+1..] --> z_1 --> CE(z_1, y) ....... ce_s1
                                  '-----> e_1 --+--> alpha (1 - cos(e_1, [e_0])) ........... metric_s1
                                                '--> alpha CE(W_1 e_1 + b_1, y) ............ verif_s1
    half_k: X_k -> encoder -> space transfer -> e_k -> decoder -> M_k; the routed feature H_k = (1 + elu(M_k)) + X_k
    (Eq. 3, --route sum) or (1 + elu(M_k)) * X_k (--route mul). K > 2 and --no-metric-detach: Decisions, Metric.

Architecture of one half (Table 1), for a stage output X of shape C x h x w and the mutual size u:
    encoder         3x3 conv, 64 ch (--mkb-width), stride h/u, BN-ReLU
    space transfer  3x3 conv 64 ch BN-ReLU, 3x3 conv embed_dim/u^2 ch BN, flatten -> e (--embed-dim 1024)
    decoder         transposed 3x3 conv, stride h/u, back to C x h x w, BN -> M

Recipes: RECIPES below, each value under its source: Sec. IV-A, and the project's lr steps at 100 and 150 (ImageNet:
100 and 200) for the paper's "divided by 10 when the error plateaus"; no lr warm-up (--lr-warmup 0). CIFAR-100 without
augmentation (--augment none; CIFAR-10: random crop only, --augment crop). Table 2's pair: its caption says ResNet-34,
but Table 1's column is the CIFAR ResNet-32 (3x3 16/32/64 x 5 blocks) and its IL baseline 68.99 is DML's ResNet-32
figure: resnet32 here; MobileNet (v1, not in the zoo): mobilenetv2 stands in. ImageNet (ResNet-34 + DenseNet-121,
Table 7): at 224 px stage 1 is 28 x 28, so --embed-dim 3136 (4 channels, as 1024 is at CIFAR's 16 x 16):

    python mkb_cl.py --recipe paper
    python scripts/reproduce.py --paper mkb_cl     # Table 2 (CIFAR-100, CIFAR-10) and Table 7 (ImageNet)
    python mkb_cl.py --recipe paper-imagenet --data-dir DIR

Decisions where the paper is silent or unclear:
- Position. `--mkb-at i` puts an MKB on stage output i (0-based, the student's list); its routed output is what the
  next stage (or the classifier after the last stage) consumes. The paper's best position (Table 5) is conv2_x of
  Table 1, the second of three stages: ResNet-32's 32 x 16 x 16 output, which is `--mkb-at 1` (the default). Table 5
  also tries conv1_x and conv3_x (`--mkb-at 0`, `2`; on CIFAR-100 the first network of that table does better at
  conv3_x); Fig. 6 uses several MKBs (`--mkb-at 1,2`). The index must exist in every network.
- Mutual size u = the smallest stage output among the networks at that position; each encoder's stride is its own
  size / u (Table 1: ResNet-32's encoder has stride 2 to meet SmallNet's 8 x 8). Sizes that are not integer multiples
  of u are refused. Strides above 2 widen the 3x3 kernels to stride + 1 (no skipped pixel).
- Embedding. The paper flattens the space transfer's output into a 1,024-d embedding; Table 1 lists 64 channels at
  8 x 8 (4,096 values). We keep the flatten literal and no fully connected layer: the second space-transfer conv has
  embed_dim / u^2 channels (4 for u = 16), so the half stays small (about 60 K parameters for ResNet-32 at stage 1) and
  the decoder decodes exactly the embedding ("three branches using the same value", Fig. 2). --embed-dim must be a
  multiple of u^2.
- BN after every convolution (Sec. IV-A); no ReLU on the embedding (a cosine target must be able to change sign) and
  none on M (elu follows).
- Route. Eq. 3's ⊕ is element-wise sum (the default); `--route mul` is the residual-attention reading Sec. III-B cites.
- Metric. The paper found a dot-product distance best; we use 1 - cosine similarity (a bounded dot product). For K > 2
  the distance is to the mean of the others' embeddings (Eq. 6, better than Eq. 5 in Fig. 7). The others' side is
  detached: Eq. 1 is each network's own objective, and Eq. 6 treats the others as one teacher; for K = 2 the sum of
  the two detached terms has exactly the gradient of one shared D(e_1, e_2). `--no-metric-detach` lets each term pull
  the others too.
- The verification classifiers are training-only and are not exported (the half's forward does not use them).
- Not implemented: iterative training and the different-input (Wasserstein) metric of Eq. 4, both worse in Fig. 4.
  `--alpha 0` is the paper's "MKB (w/o CL)" ablation (halves trained without metric/verification).
- MKB-CL has no temperature; --T is refused.

Contract (in short; the full statement is common.py's module docstring; this file needs only torch, so it can
be copied alone):
    student   nn.Module with forward(x) -> (logits, [stage outputs, shallow to deep]), checked when built
              (common.as_student(model) makes one of any torchvision classifier); a stage that gets an MKB must
              be some submodule's output (the half is hooked onto that module)
    training  loss, parts = method([x], y): parts {ce_s<i>, metric_s<i>, verif_s<i>} (the picture's), loss = their sum
    eval      method(x) -> {s0, s1, ..., ens}: each network with its half, ens = log of their mean softmax
    weights   none depends on the epoch (no set_epoch). Exports OUT/net<i>.pt (load_network rebuilds one).

Results: the README's table 'Results measured with this code' (same recipe for every method, vanilla beside it).
"""
import argparse
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


# ==================================================================================================
# Modules: one network's MKB half, and a backbone with its halves spliced in
# ==================================================================================================

def conv_bn(cin, cout, kernel=3, stride=1, relu=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class MKBHalf(nn.Module):
    """One network's half of an MKB (Fig. 2): X (C x h x w) -> (H routed into the next stage, embedding e)."""

    def __init__(self, channels, size, unified, *, embed_dim=1024, width=64, route="sum"):
        super().__init__()
        stride = tuple(s // u for s, u in zip(size, unified))
        kernel = tuple(max(3, r + 1) for r in stride)  # 3x3 as in Table 1; wider only when the stride exceeds 2
        code_channels = embed_dim // (unified[0] * unified[1])
        self.config = dict(channels=channels, size=list(size), unified=list(unified), embed_dim=embed_dim,
                           width=width, route=route)  # plain data: enough to rebuild the half
        self.route = route
        self.encoder = conv_bn(channels, width, kernel, stride)
        self.space_transfer = nn.Sequential(conv_bn(width, width), conv_bn(width, code_channels, relu=False))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code_channels, channels, kernel, stride, 1,
                               output_padding=tuple(r + 2 - k for r, k in zip(stride, kernel)), bias=False),
            nn.BatchNorm2d(channels))

    def forward(self, x):
        code = self.space_transfer(self.encoder(x))     # the embedding, still shaped as a map
        gate = 1 + F.elu(self.decoder(code))            # 1 + sigma(M), sigma = elu
        routed = gate + x if self.route == "sum" else gate * x   # Eq. 3
        return routed, code.flatten(1)


class MKBNetwork(nn.Module):
    """A student with its MKB halves after the stages in `halves` ({stage index: MKBHalf}): the deployed model.
    forward(x) -> logits; forward(x, with_embeddings=True) -> (logits, [embedding per MKB]). Each half is a
    forward hook on the submodule that returns that stage output, so the next stage consumes the routed H."""

    def __init__(self, backbone, halves, *, image_size=(32, 32)):
        super().__init__()
        self.backbone = backbone
        self.halves = nn.ModuleDict({str(i): h for i, h in sorted(halves.items())})
        self.image_size, self._embeddings = tuple(image_size), []
        producers = stage_producers(backbone, image_size)
        for i in halves:
            if producers[i] is None:
                raise ValueError(f"stage output {i} of {type(backbone).__name__} is not returned by a submodule, "
                                 f"so no MKB can be routed into the next stage there")
            producers[i].register_forward_hook(functools.partial(self._route, str(i)))

    def _route(self, key, module, inputs, x):
        routed, e = self.halves[key](x)  # Eq. 3
        self._embeddings.append(e)
        return routed  # replaces the stage output

    def forward(self, x, with_embeddings=False):
        self._embeddings = []
        logits, _ = self.backbone(x)
        return (logits, self._embeddings) if with_embeddings else logits


@torch.no_grad()
def stage_producers(student, image_size):
    """For each stage output, the submodule that returned it last (the outermost), from an eval-mode forward
    with a hook on every submodule; None where no submodule returns that tensor."""
    returned = []  # (output, module) in the order the modules finish
    hooks = [m.register_forward_hook(lambda m, i, out: returned.append((out, m))) for m in student.modules()
             if m is not student]
    mode, p = student.training, next(student.parameters())
    try:
        _, features = student.eval()(torch.zeros(1, 3, *image_size, device=p.device, dtype=p.dtype))
    finally:
        student.train(mode)
        for h in hooks:
            h.remove()
    return [next((m for out, m in reversed(returned) if out is f), None) for f in features]


def mkb_configs(shapes, archs, mkb_at, embed_dim, width, route):
    """{stage: [half config per network]} for per-network stage shapes; ValueError on a size mismatch."""
    configs = {}
    for i in mkb_at:
        for arch, s in zip(archs, shapes):
            if not 0 <= i < len(s):
                raise ValueError(f"--mkb-at {i} is not a stage of {arch} (its stages are 0 to {len(s) - 1})")
        sizes = [s[i][1:] for s in shapes]
        unified = tuple(min(hw[d] for hw in sizes) for d in (0, 1))
        if any(hw[d] % unified[d] for hw in sizes for d in (0, 1)):
            listed = ", ".join(f"{a} {h}x{w}" for a, (h, w) in zip(archs, sizes))
            raise ValueError(f"at --mkb-at {i} the stage outputs ({listed}) cannot reach one size with integer "
                             f"encoder strides: every size must be a multiple of the smallest")
        if embed_dim % (unified[0] * unified[1]):
            raise ValueError(f"--embed-dim {embed_dim} is not a multiple of the {unified[0]}x{unified[1]} "
                             f"mutual map at --mkb-at {i} (the embedding is that map flattened)")
        configs[i] = [dict(channels=s[i][0], size=list(s[i][1:]), unified=list(unified), embed_dim=embed_dim,
                           width=width, route=route) for s in shapes]
    return configs


# ==================================================================================================
# Loss
# ==================================================================================================

def metric_loss(e, target):
    """D(e, target) = 1 - cosine similarity, batch mean, float32 (Eq. 4, first line)."""
    return (1 - F.cosine_similarity(e.float(), target.float(), dim=1)).mean()


def metric_losses(embeddings, detach=True):
    """Eq. 6 for every network: D(e_i, mean of the others' embeddings), the others detached unless told."""
    total = torch.stack([e.float() for e in embeddings]).sum(0)
    others_total = total.detach() if detach else total
    k = len(embeddings)
    losses = []
    for e in embeddings:
        own = e.float().detach() if detach else e.float()
        losses.append(metric_loss(e, (others_total - own) / (k - 1)))
    return losses


# ==================================================================================================
# Method
# ==================================================================================================

class MKBCL(nn.Module):
    num_views = 1

    def __init__(self, students, num_classes, *, mkb_at=(1,), embed_dim=1024, width=64, route="sum", alpha=0.2,
                 metric_detach=True, image_size=(32, 32)):
        super().__init__()
        if len(students) < 2:
            raise ValueError("MKB-CL needs at least two networks (--students 2 or more)")
        if route not in ("sum", "mul"):
            raise ValueError(f"--route must be sum or mul, got '{route}'")
        self.mkb_at, self.alpha, self.metric_detach = sorted(set(mkb_at)), alpha, metric_detach
        shapes = [stage_shapes(s, image_size) for s in students]
        names = [getattr(s, "arch", type(s).__name__) for s in students]
        configs = mkb_configs(shapes, names, self.mkb_at, embed_dim, width, route)
        self.students = nn.ModuleList(MKBNetwork(s, {i: MKBHalf(**configs[i][k]) for i in self.mkb_at},
                                                 image_size=image_size)
                                      for k, s in enumerate(students))
        # verification classifiers (training only): one per network per MKB
        self.verifiers = nn.ModuleList(
            nn.ModuleList(nn.Linear(embed_dim, num_classes) for _ in self.mkb_at) for _ in students)

    def forward(self, views, y=None):
        if not self.training:
            logits = [net(views) for net in self.students]
            return {**{f"s{i}": z for i, z in enumerate(logits)}, "ens": ensemble_head(logits)}
        outputs = [net(views[0], with_embeddings=True) for net in self.students]
        metric = [0.0] * len(outputs)
        for m in range(len(self.mkb_at)):  # L_metric per MKB, Eq. 6
            for i, d in enumerate(metric_losses([emb[m] for _, emb in outputs], self.metric_detach)):
                metric[i] = metric[i] + d
        parts = {}
        for i, (logits, embeddings) in enumerate(outputs):  # Eq. 1-2: CE + alpha * (L_metric + L_verification)
            parts[f"ce_s{i}"] = F.cross_entropy(logits.float(), y)
            parts[f"metric_s{i}"] = self.alpha * metric[i]
            parts[f"verif_s{i}"] = self.alpha * sum(F.cross_entropy(v(e).float(), y)  # L_verification
                                                    for v, e in zip(self.verifiers[i], embeddings))
        return sum(parts.values()), parts

    def export(self):
        """{"net<i>": network i with its halves as plain data}, readable with torch.load(path, weights_only=True):
        a zoo backbone's (one with .arch) is rebuilt by `load_network`; around any other student (a fresh one of
        its class), rebuild and load it:

            payload = torch.load(path, weights_only=True)
            net = MKBNetwork(student, {i: MKBHalf(**config) for i, config in payload["mkb"].items()},
                             image_size=payload["image_size"])
            net.load_state_dict(payload["state_dict"])

        Needs nothing but torch."""
        return {f"net{i}": network_payload(net) for i, net in enumerate(self.students)}


def network_payload(net):
    """A deployable network (backbone + its MKB halves) as plain data; `load_network` rebuilds a zoo backbone's."""
    payload = {"kind": "mkb_network", "module": type(net.backbone).__name__,
               "mkb": {int(i): dict(h.config) for i, h in net.halves.items()}, "image_size": list(net.image_size),
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if hasattr(net.backbone, "arch"):
        payload.update(arch=net.backbone.arch, num_classes=net.backbone.num_classes)
    return payload


def load_network(path):
    """Rebuild a network saved by MKB-CL (net0.pt, ...) as a standalone module: eval forward -> logits; its
    `preprocess` and `classes` as common.load_backbone gives them."""
    import common
    payload = common.load_checkpoint(path)
    if payload.get("kind") != "mkb_network":
        raise common.UsageError(f"{path} is not a network saved by MKB-CL (it has no 'kind: mkb_network' entry)")
    if "arch" not in payload:
        raise common.UsageError(f"{path} holds a network around a {payload.get('module')}, not a zoo backbone; "
                                f"rebuild it as MKBNetwork(your student, halves from payload['mkb']) and load "
                                f"payload['state_dict'] into it")
    backbone = common.build_model(payload["arch"], payload["num_classes"], payload.get("image_size", 32))
    halves = {int(i): MKBHalf(**cfg) for i, cfg in payload["mkb"].items()}
    net = MKBNetwork(backbone, halves, image_size=payload.get("image_size", (32, 32)))
    net.load_state_dict(payload["state_dict"])
    net.preprocess, net.classes = payload.get("preprocess"), payload.get("classes")  # as common.load_backbone's
    return net


# ==================================================================================================
# Flags and entry point
# ==================================================================================================

# --recipe NAME (common.main): a paper's settings as flag defaults (a flag given explicitly still wins), each
# value once, under its source: the paper, the official code, or this project where both are silent
RECIPES = {
    "paper": {
        "paper, Tables 1-2 (the CIFAR ResNet-32 of Table 1; MobileNet v1, for which mobilenetv2 stands in)": dict(
            arch="resnet32,mobilenetv2", students=2, dataset="cifar100"),
        "paper, Sec. IV-A (settings, CIFAR-100 without augmentation)": dict(
            epochs=200, batch_size=128, lr=0.1, momentum=0.9, wd=1e-4, lr_warmup=0, augment="none", alpha=0.2),
        "project (the paper: 'divided by 10 when the error plateaus'; no Nesterov named)": dict(
            milestones="100,150", nesterov=False),
    },
    "paper-imagenet": {
        "paper, Table 7 (DenseNet-121 with ResNet-34)": dict(
            arch="resnet34,densenet121", students=2, dataset="imagenet"),
        "paper, Sec. IV-A (settings; ImageNet augmented as in ResNet's paper)": dict(
            epochs=300, batch_size=256, lr=0.1, momentum=0.9, wd=1e-4, lr_warmup=0, augment="crop+flip", alpha=0.2),
        "project (the paper: 'divided by 10 when the error plateaus'; no Nesterov named; the embedding at 224 px)":
            dict(milestones="100,200", nesterov=False, embed_dim=3136),
    },
}


def add_arguments(parser):
    parser.recipes = RECIPES  # for common.main's --recipe
    a = parser.add_argument
    a("--mkb-at", default="1", help="stage indices (0-based, comma list) whose outputs get an MKB; 1 = conv2_x")
    a("--embed-dim", type=int, default=1024, help="size of the embedding in the mutual space")
    a("--mkb-width", type=int, default=64, help="channels of the encoder and the first space-transfer conv")
    a("--route", default="sum", choices=["sum", "mul"], help="Eq. 3: H = (1 + elu(M)) + X, or * X")
    a("--alpha", type=float, default=0.2, help="weight of L_metric + L_verification (Eq. 1)")
    a("--metric-detach", action=argparse.BooleanOptionalAction, default=True,
      help="detach the others' embeddings in L_metric (Eq. 6)")


def build(args, data):
    import common
    if args.T is not None:
        raise common.UsageError("MKB-CL has no temperature; drop --T")
    try:
        mkb_at = [int(i) for i in args.mkb_at.split(",") if i.strip()]
    except ValueError:
        raise common.UsageError(f"--mkb-at must be a comma list of stage indices, got '{args.mkb_at}'") from None
    if not mkb_at:
        raise common.UsageError("--mkb-at needs at least one stage index")
    if args.embed_dim < 1 or args.mkb_width < 1 or args.alpha < 0:
        raise common.UsageError("--embed-dim and --mkb-width must be positive and --alpha non-negative")
    return MKBCL(common.build_students(args, data), data.num_classes, mkb_at=mkb_at,
                 embed_dim=args.embed_dim, width=args.mkb_width, route=args.route, alpha=args.alpha,
                 metric_detach=args.metric_detach, image_size=tuple(data.image_size))


def main(argv=None):
    try:
        import common
    except ModuleNotFoundError as e:  # copied alone: the method needs only torch, its script needs common.py
        raise SystemExit("error: mkb_cl.py trains through common.py, which is not beside it: run it from a clone of "
                         "the repo, or use MKB-CL in your own training loop (README)") if e.name == "common" else e
    return common.main("mkb_cl", add_arguments, build, argv, __doc__)


# ==================================================================================================
# Shared with the other method files: the same text in each (test_methods.py checks it), so that
# every file can be copied alone
# ==================================================================================================

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
