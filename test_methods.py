"""Tests: backbones, data, the loop, checkpoints, bad input, and every method end to end on tiny budgets.

Run: python -m pytest -q test_methods.py      (about N minutes on 2 CPU cores)
"""
import json
import os
import subprocess
import sys
import tarfile

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

SHARED_TAR = os.path.join(HERE, "..", "shared", "data", "cifar10-jpeg.tar.gz")
# the smallest run that exercises everything: 2 x resnet20, 256 synthetic images, one epoch
TINY = ["--dataset", "synthetic", "--limit-train", "256", "--limit-test", "128", "--epochs", "1",
        "--batch-size", "64", "--arch", "resnet20", "--device", "cpu"]


def vanilla(argv):
    return common.main(argv=argv)


def run_main(main, argv, out_dir):
    """Run a script's main() in-process and return its results.json."""
    main(argv + ["--out-dir", str(out_dir)])
    with open(os.path.join(out_dir, "results.json")) as f:
        return json.load(f)


def run_cli(script, *argv):
    """Run a script as a user would; returns (exit status, stdout + stderr)."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, script), *argv], capture_output=True, text=True,
                          cwd=HERE, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records]


# ================================================================================================
# Backbones
# ================================================================================================

@pytest.mark.parametrize("arch,params,shapes", [
    ("resnet32", 0.47e6, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet20", 0.28e6, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("wrn_16_2", 0.70e6, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    ("wrn_40_2", 2.25e6, [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    ("resnet18", 11.2e6, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
])
def test_backbone_shapes_and_parameter_counts(arch, params, shapes):
    model = common.build_model(arch, 100)
    logits, features = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100)
    assert [tuple(f.shape[1:]) for f in features] == shapes
    assert abs(common.count_params(model) - params) / params < 0.02


@pytest.mark.parametrize("arch", ["mobilenetv2", "shufflenetv2", "vgg16", "resnet34", "resnet56", "wrn_28_10"])
def test_every_zoo_name_runs_at_cifar_size(arch):
    logits, features = common.build_model(arch, 10)(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and len(features) >= 3
    # stages run one by one give the same result as forward
    model = common.build_model(arch, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    h = x
    for stage in model.stages:
        h = stage(h)
    assert torch.allclose(model.classifier(h), model(x)[0], atol=1e-5)


# ================================================================================================
# Data
# ================================================================================================

def test_augment_is_a_shifted_window_of_the_padded_image_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = common.augment(x, g)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        windows = {(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (0, 1)
                   if torch.equal(out[i], (padded[i, :, dy:dy + 32, dx:dx + 32].flip(2) if flip
                                           else padded[i, :, dy:dy + 32, dx:dx + 32]))}
        assert windows, f"sample {i} is not a crop of its padded image"
        flips += all(f for _, _, f in windows)
    assert 10 < flips < 54  # about half are mirrored
    assert not torch.equal(common.augment(x, g), common.augment(x, g))  # each call (student view) differs


def test_balanced_subsets_and_hold_out():
    xtr, ytr, xte, yte, nc = common.synthetic(n_train=500, n_test=100)
    data = common.Data(xtr, ytr, xte, yte, nc, torch.device("cpu"))
    hx, hy = data.hold_out(5)
    assert torch.equal(torch.bincount(hy, minlength=nc), torch.full((nc,), 5))
    assert len(data.train_y) == 450
    # held-out images are no longer in the training set
    train_set = {bytes(t.numpy()) for t in data.train_x}
    assert not any(bytes(t.numpy()) in train_set for t in hx)


def test_synthetic_data_is_learnable(tmp_path):
    results = run_main(vanilla, ["--dataset", "synthetic", "--limit-train", "1000", "--limit-test", "500",
                                     "--epochs", "2", "--batch-size", "50", "--arch", "resnet20", "--students", "1",
                                     "--device", "cpu"], tmp_path)
    assert results["final"]["s0"] > 50  # chance is 10 %


@pytest.fixture(scope="module")
def cifar10_subset(tmp_path_factory):
    """30 train / 10 test real CIFAR-10 images per class from ../shared/data, in the ImageFolder layout."""
    if not os.path.exists(SHARED_TAR):
        pytest.skip("../shared/data/cifar10-jpeg.tar.gz is not beside the repository")
    root = tmp_path_factory.mktemp("cifar10")
    want, seen = {"train": 30, "test": 10}, {}
    with tarfile.open(SHARED_TAR) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or parts[-3] not in want:
                continue
            key = (parts[-3], parts[-2])
            if seen.get(key, 0) < want[parts[-3]]:
                seen[key] = seen.get(key, 0) + 1
                dest = root / parts[-3] / parts[-2]
                dest.mkdir(parents=True, exist_ok=True)
                (dest / parts[-1]).write_bytes(tar.extractfile(member).read())
    assert len(seen) == 20
    return root


def test_folder_dataset_on_real_cifar10_trains_and_caches(cifar10_subset, tmp_path):
    results = run_main(vanilla, ["--dataset", "folder", "--data-dir", str(cifar10_subset), "--epochs", "1",
                                     "--batch-size", "50", "--arch", "resnet20", "--device", "cpu"], tmp_path / "a")
    assert set(results["final"]) == {"s0", "s1", "ens"}
    assert os.path.exists(cifar10_subset / ".okd-cache.pt")
    first = common.load_folder(str(cifar10_subset), 1)
    assert first[0].shape == (300, 3, 32, 32) and first[2].shape == (100, 3, 32, 32) and first[4] == 10


# ================================================================================================
# The loop: determinism, resume, outputs
# ================================================================================================

def test_seed_makes_runs_identical_and_resume_continues_exactly(tmp_path):
    argv = TINY + ["--epochs", "2", "--milestones", "1"]
    run_main(vanilla, argv, tmp_path / "a")
    run_main(vanilla, argv, tmp_path / "b")
    run_main(vanilla, TINY + ["--milestones", "1"], tmp_path / "c")   # 1 epoch ...
    run_main(vanilla, argv + ["--resume"], tmp_path / "c")            # ... + resume to 2
    a, b, c = (without_timing(read_metrics(tmp_path / d)) for d in "abc")
    assert len(a) == 2 and a == b == c
    assert a[1]["lr"] == pytest.approx(0.01)
    for name in ("args.json", "metrics.jsonl", "last.pt", "best.pt", "results.json", "s0.pt", "s1.pt"):
        assert os.path.exists(tmp_path / "a" / name), name
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["method"] == "vanilla"
    results = json.load(open(tmp_path / "a" / "results.json"))
    for key in ("final", "best", "train_seconds", "device", "torch", "torchvision", "command", "params"):
        assert key in results


def test_exported_student_loads_alone_and_reproduces_its_head(tmp_path):
    results = run_main(vanilla, TINY, tmp_path)
    model = common.load_backbone(str(tmp_path / "s1.pt"), "resnet20", 10)
    data = common.load_data(common.check_args(common.make_parser().parse_args(TINY + ["--out-dir", str(tmp_path / "x")]),
                                              "vanilla"), torch.device("cpu"))
    assert common.evaluate(model, data)["top1"] == pytest.approx(results["final"]["s1"])


# ================================================================================================
# Bad input: one sentence, non-zero exit, no traceback, nothing saved is lost
# ================================================================================================

@pytest.mark.parametrize("argv,expected", [
    (["--arch", "resnet33"], "unknown architecture 'resnet33'; choose from resnet20"),
    (["--arch", "resnet20,wrn_16_2,resnet32", "--students", "2"], "--arch lists 3 architectures but --students is 2"),
    (["--dataset", "folder", "--data-dir", "/nonexistent/dir"], "--data-dir /nonexistent/dir does not exist"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--limit-train", "5"], "--limit-train 5 is below the number of classes"),
    (["--resume"], "does not exist"),
    (["--device", "cuda:0"], "no CUDA device"),
    (["--dataset", "imagenet"], "invalid choice"),
])
def test_bad_input_ends_in_one_sentence(tmp_path, argv, expected):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, output = run_cli("common.py", *TINY, "--out-dir", str(tmp_path / "run"), *argv)
    assert status != 0
    assert expected in output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1


def test_checkpoint_faults_keep_what_was_saved(tmp_path):
    out = tmp_path / "run"
    run_main(vanilla, TINY, out)
    before = (out / "last.pt").read_bytes()
    # an existing run is never overwritten without --resume
    status, output = run_cli("common.py", *TINY, "--out-dir", str(out))
    assert status != 0 and "already holds a run" in output
    # a checkpoint of another architecture or method is refused
    status, output = run_cli("common.py", *TINY, "--epochs", "2", "--arch", "resnet32", "--out-dir", str(out), "--resume")
    assert status != 0 and "--arch resnet20" in output and "Traceback" not in output
    status, output = run_cli("dml.py", *TINY, "--epochs", "2", "--out-dir", str(out), "--resume")
    assert status != 0 and "written by 'vanilla'" in output
    assert (out / "last.pt").read_bytes() == before
    # a corrupt checkpoint is named as such
    (out / "last.pt").write_bytes(before[: len(before) // 2])
    status, output = run_cli("common.py", *TINY, "--epochs", "2", "--out-dir", str(out), "--resume")
    assert status != 0 and "not a readable checkpoint" in output and "Traceback" not in output


class Exploding(common.Vanilla):
    """Vanilla whose loss becomes NaN in the second epoch."""

    def set_epoch(self, epoch, epochs):
        self.epoch = epoch

    def forward(self, views, y=None):
        out = super().forward(views, y)
        if self.training and self.epoch == 1:
            loss, parts = out
            parts["ce_s1"] = parts["ce_s1"] * float("nan")
            return loss + parts["ce_s1"], parts
        return out


def test_non_finite_loss_stops_with_a_sentence_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    def build(args, data):
        return Exploding(common.build_students(args, data.num_classes))

    with pytest.raises(SystemExit) as stop:
        common.main("exploding", None, build, TINY + ["--epochs", "3", "--out-dir", str(tmp_path)])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert "'ce_s1' became non-finite at epoch 2, step 1" in message and "(epoch 1) is untouched" in message
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
