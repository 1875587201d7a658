"""Evaluate saved networks on a data set's test split: top-1 and top-5 of every head, without training code.

    python scripts/evaluate.py runs/dml_resnet32_cifar100_seed0/s0.pt        # an exported student
    python scripts/evaluate.py runs/dml_resnet32_cifar100_seed0/best.pt      # every head of a run's checkpoint
    python scripts/evaluate.py RUN/leader.pt OTHER_RUN/net0.pt --dataset cifar100 --data-dir ./data --device cuda

What it reads: the networks a run exports (s<k>.pt, every method's students but FFSD's, ONE's branches each with
the trunk; leader.pt, FFSD's leader: plain backbones, common.load_backbone reads them; net<k>.pt, an MKB-CL
student with its MKB halves, mkb_cl.load_network) and a run's checkpoints (best.pt, last.pt), whose method is
rebuilt from the flags saved in them, so that every head is evaluated: s0, s1, ..., ens and the method's own
(fused, leader, gate).

The data flags are the training scripts'. Each one left out is the run's own: saved in a checkpoint, in
args.json (else results.json) beside an exported network, or in the exported network itself (its data set
and test subset); so `evaluate.py RUN/s0.pt` measures what the run measured, and so does a copy of s0.pt
anywhere else given only where the data is (`--data-dir DIR`). An exported network is normalised with the
mean and std it carries (folder and synthetic data: those of the training images its run used), not with
the statistics of the data loaded here. A file that is not a network saved here, or one that does not fit the
data (its classes, its image size), ends in one sentence.
"""
import argparse
import copy
import importlib
import json
import os
import sys
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

DATA_FLAGS = ("dataset", "data_dir", "stream", "image_size", "limit_train", "limit_test")  # the run's own by default


def parse(argv):
    p = common.Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    own = "(default: the run's own, else the training scripts' default)"
    a("files", nargs="+", help="exported networks (s<k>.pt, leader.pt, net<k>.pt) or a run's best.pt / last.pt")
    a("--dataset", choices=common.DATASETS, default=argparse.SUPPRESS, help=f"whose test split is used {own}")
    a("--data-dir", default=argparse.SUPPRESS, help=f"where the data set is {own}")
    a("--stream", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
      help=f"folder, cinic10: stream the images from disk {own}")
    a("--image-size", type=int, default=argparse.SUPPRESS, help=f"streamed data: the crop the networks see {own}")
    a("--limit-train", type=int, default=argparse.SUPPRESS,
      help=f"class-balanced subset of N training images, whose statistics normalise folder and synthetic data {own}")
    a("--limit-test", type=int, default=argparse.SUPPRESS, help=f"class-balanced subset of N test images {own}")
    a("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a("--amp", default="auto", choices=["auto", "bf16", "off"], help="bf16 autocast (auto: on for CUDA)")
    a("--batch-size", type=int, default=None, help="test images per batch (default: 1000 in memory, 256 streamed)")
    a("--workers", type=int, default=None, help="decoding threads / DataLoader workers (default: the scripts')")
    return p.parse_args(argv)


def saved_args(path, payload):
    """The flags of the run that wrote `path`: a checkpoint holds them; an exported network has its run's
    args.json (or results.json) beside it, and carries its data flags itself (`trained_on`); {} where there is
    none."""
    if isinstance(payload.get("args"), dict):
        return payload["args"]
    for name in ("args.json", "results.json"):
        try:
            with open(os.path.join(os.path.dirname(path), name)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        return record.get("args", {}) if name == "results.json" else record
    return dict(payload.get("trained_on") or {})


def data_args(opts, saved):
    """The flags common.load_data reads (and --device, --amp): the training scripts' defaults, the run's own
    data flags over them, the flags given here over those; checked as a training script checks its own."""
    args = common.make_parser().parse_args([])
    for key in DATA_FLAGS:
        if key in saved:
            setattr(args, key, saved[key])
        if hasattr(opts, key):
            setattr(args, key, getattr(opts, key))
    if not args.stream and args.dataset != "imagenet" and not hasattr(opts, "image_size"):
        args.image_size = None  # the run's crop size is no flag of in-memory data (--no-stream)
    args.device, args.amp = opts.device, opts.amp
    if opts.workers is not None:
        args.workers = opts.workers
    common.check_args(args)
    return args


def check_fit(path, num_classes, image_size, data, args):
    """One sentence where the network in `path` was not made for this data: its classes, its image size."""
    if num_classes != data.num_classes:
        raise common.UsageError(f"{path} was trained for {num_classes} classes, but --dataset {args.dataset} "
                                f"has {data.num_classes}")
    size = tuple(image_size) if isinstance(image_size, (list, tuple)) else (image_size, image_size)
    if size != tuple(data.image_size):
        raise common.UsageError(f"{path} was trained on {size[0]}x{size[1]} images, but --dataset {args.dataset} "
                                f"gives {data.image_size[0]}x{data.image_size[1]}")


def trained_classes(state):
    """The classes a run's checkpoint was trained for: the outputs of student 0's classifier (ONE: branch 0's; None:
    not found)."""
    weights = [v for k, v in state.items() if k.startswith(("students.0.", "branches.0.")) and ".classifier." in k
               and k.endswith(".weight") and v.dim() == 2]
    return weights[-1].shape[0] if weights else None


def rebuild(path, ckpt, data, args):
    """A run's checkpoint as its method: built from the flags saved in it, with the checkpoint's weights."""
    name, saved = ckpt["method"], SimpleNamespace(**{"input_size": [32, 32], **ckpt["args"]})
    classes = trained_classes(ckpt["model"]) or data.num_classes
    check_fit(path, classes, saved.input_size, data, args)
    shape = SimpleNamespace(num_classes=classes, image_size=tuple(saved.input_size),
                            hold_out=lambda per_class: None)  # what build() reads of the data (KDCL holds out none)
    if name == "vanilla":
        return common.Vanilla(common.build_students(saved, shape))
    if not os.path.isfile(os.path.join(ROOT, f"{name}.py")):
        raise common.UsageError(f"{path} was written by '{name}', which is not a method of this project")
    module = importlib.import_module(name)
    load_backbone = common.load_backbone
    if name == "ffcl" and getattr(saved, "regularization", False):
        # FFCL reads its frozen pre-trained peers from files (or trains them): built fresh here, they take
        # their weights from the checkpoint like every other module
        saved.pretrained, saved.pretrain_epochs = ",".join(saved.archs), 0
        common.load_backbone = lambda p, arch=None, num_classes=None: common.build_model(arch, num_classes,
                                                                                           saved.input_size)
    try:
        return module.build(saved, shape)
    except ValueError as e:
        raise common.UsageError(f"{path}: {e}") from None
    finally:
        common.load_backbone = load_backbone


def kind_of(path, payload):
    """'backbone' or 'mkb_network' (an exported network), 'checkpoint' (a run's best.pt, last.pt), else one sentence."""
    if isinstance(payload, dict):
        exported = {"arch", "num_classes", "state_dict"} <= payload.keys()
        if payload.get("kind") in ("backbone", "mkb_network") and exported:
            return payload["kind"]
        if payload.get("kind") in ("student", "mkb_network"):  # exported from a student of the user's own
            raise common.UsageError(f"{path} holds the weights of a {payload.get('module')}, a network of your own "
                                    f"that evaluate.py cannot rebuild; load them into that network with "
                                    f"load_state_dict(torch.load(path, weights_only=True)['state_dict']) and pass "
                                    f"it to common.evaluate(network, data)")
        if {"method", "model", "args"} <= payload.keys():
            return "checkpoint"
    raise common.UsageError(f"{path} is neither a network a run exports (s<k>.pt, leader.pt, net<k>.pt) "
                            f"nor a run's checkpoint (best.pt, last.pt)")


def load_network(path, payload, kind, data, args):
    """(module, head names, what it is): the network(s) in `path` ready for common.evaluate."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if kind == "backbone":
        check_fit(path, payload["num_classes"], payload.get("image_size", 32), data, args)
        return common.load_backbone(path), {"top1": stem}, f"{payload['arch']} backbone"
    if kind == "mkb_network":
        check_fit(path, payload["num_classes"], payload.get("image_size", 32), data, args)
        import mkb_cl
        return mkb_cl.load_network(path), {"top1": stem}, f"{payload['arch']} with MKB-CL's blocks"
    method = rebuild(path, payload, data, args)
    try:
        method.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise common.UsageError(f"{path} does not match the {payload['method']} its saved flags build "
                                f"({str(e).splitlines()[0][:200]})") from None
    epochs = payload["args"].get("epochs")
    return method, {}, f"{payload['method']} checkpoint, epoch {payload.get('epoch')} of {epochs}"


def with_preprocessing(data, preprocess):
    """The data normalised as an exported network's run normalised it (the mean and std it carries), sharing the
    images of `data`; `data` itself where the file carries none (a checkpoint: its flags rebuild the same data)."""
    if not preprocess:
        return data
    data = copy.copy(data)
    data.mean, data.std = common.normalisation(preprocess["mean"], preprocess["std"], data.mean.device)
    return data


def evaluate_file(path, opts, datasets):
    """{head: (top-1, top-5)} of the network(s) in `path`; its data set is loaded once per set of data flags."""
    payload = common.load_checkpoint(path)
    kind = kind_of(path, payload)
    args = data_args(opts, saved_args(path, payload))
    settings = common.derive_settings(args)  # the device, bf16 and memory layout a training run would use
    key = tuple(getattr(args, k) for k in DATA_FLAGS)
    if key not in datasets:
        datasets[key] = common.load_data(args, settings.device)
    data = with_preprocessing(datasets[key], payload.get("preprocess"))
    module, names, what = load_network(path, payload, kind, data, args)
    module.to(settings.device)
    if settings.channels_last:
        module.to(memory_format=torch.channels_last)
    top1, _, top5 = common.evaluate(module, data, settings, opts.batch_size)
    print(f"{path}: {what}; test split of {args.dataset} ({len(data.test_y)} images, {data.num_classes} classes), "
          f"{common.device_name(settings.device)}{', bf16' if settings.bf16 else ''}")
    print(f"  {'head':<8} {'top-1':>7} {'top-5':>7}")
    for head, acc in top1.items():
        print(f"  {names.get(head, head):<8} {acc:7.2f} {top5[head]:7.2f}")
    return {names.get(h, h): (a, top5[h]) for h, a in top1.items()}


def main(argv=None):
    opts = parse(argv)
    datasets, results = {}, {}
    try:
        if opts.batch_size is not None and opts.batch_size < 1:
            raise common.UsageError(f"--batch-size must be at least 1, got {opts.batch_size}")
        for path in opts.files:
            results[path] = evaluate_file(path, opts, datasets)
    except common.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return results


if __name__ == "__main__":
    main()
