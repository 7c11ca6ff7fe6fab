"""How many EOT copies to put in one forward pass: measures the ResNet-20 on this machine.

Two tables:
  1. forward+backward (input gradient) time per image vs batch size;
  2. one PGD-EOT iteration (64 images x 20 draws by default) for several chunkings: 20 forwards of
     one copy each, chunks of 2/4/10 copies, and all 20 copies in one forward.

The figures set ``attacks.pgd_eot.TARGET_IMAGES_PER_FORWARD``. Run on an otherwise quiet machine:

    /work/venv/bin/python benchmarks/eot_chunking.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from attacks.pgd_eot import eot_gradient


def load_resnet20(data_dir: Path) -> torch.nn.Module:
    from bench.classifiers.resnet_cifar import resnet20

    return resnet20(model_dir=str(data_dir / "weights")).eval()


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn``. CPU time (``time.process_time``) is what to read on a
    shared machine: wall time there mostly measures the other jobs."""
    fn()  # warm-up (allocator, kernels)
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (default 3)")
    parser.add_argument("--images", type=int, default=64, help="attacked batch for table 2 (default 64)")
    parser.add_argument("--draws", type=int, default=20, help="EOT draws for table 2 (default 20)")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 48, 64, 96, 128, 256, 512],
                        help="batch sizes for table 1 (default 16 32 48 64 96 128 256 512)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 10, 20],
                        help="EOT copies per forward for table 2 (default 1 2 4 10 20)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("BENCH_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_resnet20(args.data_dir)
    for p in model.parameters():
        p.requires_grad_(False)  # an attack needs input gradients only

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"ResNet-20, CPU, {args.threads} thread(s), median of {args.repeats}, "
          f"1-min load average at start {load:.1f} on {os.cpu_count()} cores")
    print("\n1. forward+backward per image vs batch size")
    print(f"{'batch':>6} {'wall s':>8} {'cpu s':>8} {'wall ms/img':>12} {'cpu ms/img':>11}")
    for batch in args.batches:
        x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        wall, cpu = timed(lambda: fwd_bwd(model, x, y), args.repeats)
        print(f"{batch:>6} {wall:>8.3f} {cpu:>8.3f} {1000 * wall / batch:>12.3f} {1000 * cpu / batch:>11.3f}")

    n, draws = args.images, args.draws
    print(f"\n2. one PGD-EOT iteration, {n} images x {draws} draws")
    print(f"{'copies/forward':>15} {'images/forward':>15} {'forwards':>9} {'wall s/iter':>12} {'cpu s/iter':>11}")
    x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    for chunk in sorted(set(args.chunks)):
        wall, cpu = timed(lambda: eot_gradient(model, x, y, draws, chunk), args.repeats)
        print(f"{chunk:>15} {chunk * n:>15} {-(-draws // chunk):>9} {wall:>12.3f} {cpu:>11.3f}")


if __name__ == "__main__":
    main()
