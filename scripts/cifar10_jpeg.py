"""CIFAR-10 as JPEG files in the ImageFolder layout, the copy the README's results table was measured on.

    python scripts/cifar10_jpeg.py                                   # ./data's CIFAR-10 -> data/cifar10-jpeg.tar.gz
    python scripts/cifar10_jpeg.py --cifar ~/datasets --out data/cifar10-jpeg   # a folder instead of a tarball
    python dml.py --dataset folder --data-dir data/cifar10-jpeg --arch resnet20   # train on the folder

What it reads: torchvision's CIFAR-10 (the python version: cifar-10-batches-py/, with data_batch_1..5,
test_batch and batches.meta) in --cifar or --cifar/cifar-10-batches-py; missing, torchvision downloads it there
(163 MB, needs the internet). What it writes, into --out (a folder, or a .tar.gz holding the same tree):

    train/<class>/NNNN.jpg   5,000 a class, numbered from 0000 per class in the order of data_batch_1..5
    test/<class>/NNNN.jpg    1,000 a class, numbered in the order of test_batch

<class> is CIFAR-10's label name (airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck: their
sorted order is the label order). Each image is saved by PIL at JPEG quality 75 with 4:2:0 chroma subsampling
(PIL's defaults; the IJG quality-75 tables and the subsampling of the copy the table was measured on). The
tarball's members are sorted, with fixed owners and times, so the same input gives the same bytes. Byte
identity with the copy behind the table was not checked (it came from elsewhere; its images decode to
CIFAR-10's within JPEG error). The folder data set (`--dataset folder`) decodes the JPEGs once and caches them.
"""
import argparse
import gzip
import io
import os
import pickle
import sys
import tarfile

import numpy as np

BATCHES = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def die(message):
    """A usage error: one sentence on stderr, exit status 2 (as the training scripts do)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cifar", default="./data",
                   help=f"the folder holding {BATCHES}/ (torchvision's --data-dir), or that folder itself")
    p.add_argument("--out", default=os.path.join("data", "cifar10-jpeg.tar.gz"),
                   help="a folder to write train/ and test/ into, or a .tar.gz holding them")
    p.add_argument("--quality", type=int, default=75, help="JPEG quality (75: the copy the table used)")
    return p.parse_args(argv)


def batches_folder(where):
    """The cifar-10-batches-py folder in or at `where`; downloaded there by torchvision when missing."""
    for folder in (where, os.path.join(where, BATCHES)):
        if os.path.isfile(os.path.join(folder, "batches.meta")):
            return folder
    try:
        import torchvision
        torchvision.datasets.CIFAR10(where, train=True, download=True)
    except Exception as e:  # offline, or a folder that cannot be written: what to put there instead
        die(f"{where} holds no {BATCHES}/ and it could not be downloaded ({type(e).__name__}); put torchvision's "
            f"CIFAR-10 (python version) there and pass --cifar {where}")
    return os.path.join(where, BATCHES)


def unpickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        die(f"cannot read {path} ({type(e).__name__}); it should be a CIFAR-10 batch of the python version")


def images(folder, names):
    """Every image of the batches `names` in their order: (uint8 H x W x 3 array, label)."""
    for name in names:
        batch = unpickle(os.path.join(folder, name))
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), batch[b"labels"]
        yield from zip(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)


def jpeg(array, quality):
    """An image as JPEG bytes: PIL, the given quality, 4:2:0 chroma subsampling."""
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
    return buffer.getvalue()


def files(folder, quality):
    """(relative path, JPEG bytes) of every image: train/<class>/NNNN.jpg, then test/<class>/NNNN.jpg."""
    classes = [n.decode() for n in unpickle(os.path.join(folder, "batches.meta"))[b"label_names"]]
    for split, names in (("train", TRAIN), ("test", ["test_batch"])):
        counts = [0] * len(classes)
        for array, label in images(folder, names):
            yield f"{split}/{classes[label]}/{counts[label]:04d}.jpg", jpeg(array, quality)
            counts[label] += 1


def write_folder(out, entries):
    for path, data in entries:
        target = os.path.join(out, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)


def write_tar(out, entries):
    """A .tar.gz of the entries (and their folders), sorted, with fixed owners, modes and times."""
    entries = sorted(entries)
    folders = sorted({os.path.dirname(p) for p, _ in entries} | {p.split("/")[0] for p, _ in entries})
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    try:  # gzip's header without a file name or time: the same bytes for the same images
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped, \
                tarfile.open(fileobj=zipped, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name in folders:
                info = tarfile.TarInfo(name + "/")
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for name, data in entries:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    opts = parse(argv)
    if os.path.exists(opts.out):
        die(f"{opts.out} already exists; remove it or pass another --out")
    if not 1 <= opts.quality <= 95:
        die(f"--quality must be in 1..95 (PIL's range), got {opts.quality}")
    folder = batches_folder(opts.cifar)
    entries = files(folder, opts.quality)
    if opts.out.endswith((".tar.gz", ".tgz")):
        write_tar(opts.out, list(entries))
    else:
        write_folder(opts.out, entries)
    print(f"wrote {opts.out} (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg) from {folder}")
    return opts.out


if __name__ == "__main__":
    main()
