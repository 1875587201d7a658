"""How many images per second each data path delivers, with no network: a figure to plan a run with.

    streamed    common.StreamedData (ImageNet, --stream): DataLoader workers decode JPEGs, RandomResizedCrop
                + flip to --image-size, uint8 into (pinned) memory, normalised on the device
    in memory   common.Data (CIFAR, MNIST, STL-10, small folders): random crop of the padded uint8 batch +
                flip + normalisation as tensor ops on the device, at 32 px and at --image-size

Without --data-dir the streamed path reads --images generated JPEGs of ImageNet's typical size (500 x 375,
quality 90; smooth random content plus noise, about ImageNet's file size). Throughput is images per
second over --batches batches after one warm-up batch (the streamed path's includes starting the workers).

    python scripts/bench_data.py                          # default workers (one per core)
    python scripts/bench_data.py --data-dir DIR --workers 8 --device cuda
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


def write_jpegs(root, n, classes=4, seed=0):
    """n ImageNet-like JPEGs (500 x 375) in root/train/<class>/ and a few in root/val/<class>/."""
    import numpy as np
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", n), ("val", classes)):
        for i in range(count):
            folder = os.path.join(root, split, f"c{i % classes}")
            os.makedirs(folder, exist_ok=True)
            smooth = F.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(375, 500), mode="bicubic")
            img = (255 * (smooth + 0.08 * torch.randn(1, 3, 375, 500, generator=g))).clamp(0, 255).byte()
            Image.fromarray(np.ascontiguousarray(img[0].permute(1, 2, 0).numpy())).save(
                os.path.join(folder, f"{i}.jpg"), quality=90)
    return root


def rate(batches, count):
    """Images per second over the batches after the first (the warm-up)."""
    it = iter(batches)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(count):
        views, _ = next(it)
        n += len(views[0])
    if views[0].device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="an ImageFolder with train/ and val/ (default: generated JPEGs)")
    p.add_argument("--images", type=int, default=384, help="generated JPEGs (without --data-dir)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (the default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=5, help="timed batches per path")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args()
    device = torch.device(a.device)
    gen = torch.Generator(device=device).manual_seed(0)
    need = (a.batches + 1) * a.batch_size
    results = {"device": common.device_name(device), "torch": torch.__version__, "workers": a.workers,
               "batch_size": a.batch_size, "image_size": a.image_size, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        root = a.data_dir or write_jpegs(tmp, need)
        try:
            data = common.StreamedData(*common.split_folders(common.image_folder(root), ("val",)), device,
                                       a.image_size, a.workers)
        except common.UsageError as e:
            sys.exit(f"error: {e}")
        steps = min(a.batches + 1, len(data.train_y) // a.batch_size)
        results["streamed"] = rate(data.train_batches(gen, a.batch_size, steps), steps - 1)
    for size in (32, a.image_size):
        x = torch.randint(0, 256, (need, 3, size, size), dtype=torch.uint8)
        data = common.Data(x, torch.arange(need) % 10, x[:10], torch.arange(10), 10, device)
        results[f"in_memory_{size}px"] = rate(data.train_batches(gen, a.batch_size, a.batches + 1), a.batches)
    print(json.dumps(results, indent=2))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
