"""Clean accuracy of the offline classifiers on the full CIFAR-10 test set, written as a Markdown report.

The published figures (shared data README) are 91.73 / 92.63 / 93.10 / 93.39% for ResNet-20/32/44/56;
the pyautoattack ResNet-18 has no published full-set figure (93.7% on the first 1000 images). The
test suite checks a fixed slice; this script measures the full set and records wall time per model.

Usage:
    python benchmarks/classifier_accuracy.py --data-dir ../shared/data --threads 1 \
        --output docs/reports/classifier_accuracy.md
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from pathlib import Path

import click
import torch

from bench.classifiers import load_classifier
from bench.datasets import CIFAR10, data_dir

MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "autoattack-resnet18")
PUBLISHED = {"resnet20": 9173, "resnet32": 9263, "resnet44": 9310, "resnet56": 9339}  # shared data README


def measure(name: str, x: torch.Tensor, y: torch.Tensor, weights: Path, batch_size: int) -> dict:
    spec = {"name": name, "model_dir": str(weights)} if name.startswith("resnet") else name
    model = load_classifier(spec)
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "name": name,
        "params": sum(p.numel() for p in model.parameters()),
        "correct": int((pred == y).sum()),
        "n": len(y),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


@click.command()
@click.option("--data-dir", "data", type=click.Path(file_okay=False), default=None, help="Folder with cifar10_test.npz and weights/ (default: BENCH_DATA_DIR).")
@click.option("--threads", type=int, default=1, show_default=True, help="torch intra-op threads.")
@click.option("--batch-size", type=int, default=500, show_default=True)
@click.option("--models", default=",".join(MODELS), show_default=True, help="Comma-separated classifier names.")
@click.option("--output", type=click.Path(dir_okay=False), default="docs/reports/classifier_accuracy.md", show_default=True)
def main(data: str | None, threads: int, batch_size: int, models: str, output: str) -> None:
    """Measure clean accuracy on all 10,000 test images and write a Markdown report."""
    torch.set_num_threads(threads)
    root = data_dir(data)
    x, y = CIFAR10(root=root).images()
    rows = []
    for name in models.split(","):
        row = measure(name, x, y, root / "weights", batch_size)
        click.echo(f"{name}: {row['correct']}/{row['n']} in {row['seconds']:.1f} s ({row['cpu_seconds']:.1f} s CPU)")
        rows.append(row)
    lines = [
        "# Clean accuracy of the offline classifiers (CIFAR-10 test set)",
        "",
        f"Produced by `python benchmarks/classifier_accuracy.py --threads {threads}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {threads} thread(s), batch {batch_size}, "
        "shared machine: CPU time (process time of this single-threaded run) is the cost; wall time "
        "also counts waiting for other processes.",
        "",
        "| classifier | parameters | correct | accuracy | published | CPU time (s) | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        published = f"{PUBLISHED[r['name']] / 100:.2f}%" if r["name"] in PUBLISHED else "—"
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['correct']}/{r['n']} | {100 * r['correct'] / r['n']:.2f}% "
            f"| {published} | {r['cpu_seconds']:.1f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "`tests/test_classifiers.py` checks ResNet-20 on all 10,000 images (a `slow` test) and the",
        "ResNet-18 on the first 200 (188 correct) plus logit equality with pyautoattack's own",
        "`examples/resnet.py`; ResNet-32/44/56 and the full-set ResNet-18 run only here.",
        "",
    ]
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
