"""``bench plan JOB``: tasks, images, network evaluations and estimated time per cell, before running."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli.common import BadInput, absolute, data_dir_option, main, model_dir_option, translate_errors


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0.1:
        return f"{seconds * 1000:.2g} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _count(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:g}"


def render_plan(plan) -> str:  # noqa: ANN001 - bench.plan.JobPlan (imported lazily)
    """The plan as a Markdown table per cell plus a total line."""
    gpu = f"{plan.gpu} (x{plan.gpu_efficiency:g} of peak)" if plan.gpu else None
    head = ["defense", "attack", "mode", "success", "tasks", "images", "K", "NFE/image clean+attack+judge", "NFE total",
            f"time on {plan.device}"] + ([f"time on {gpu}"] if gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in plan.cells:
        bound = "" if c.exact else " (upper bound)"
        judged = f" ({_count(c.judgements)} judged)" if c.judgements > 1 else ""
        row = [c.defense, c.attack, c.mode, f"{c.rule}{judged}", str(c.tasks), str(c.images), str(c.votes),
               f"{_count(c.nfe_clean)} + {_count(c.nfe_attack)} + {_count(c.nfe_adversarial)} = "
               f"{_count(c.nfe_per_image)}{bound}", _count(c.nfe_total), _duration(c.seconds)]
        if gpu:
            row.append(_duration(c.gpu_seconds))
        lines.append("| " + " | ".join(row) + " |")
    total = [f"**total** ({len(plan.cells)} cells)", "", "", "", str(plan.total_tasks),
             str(sum(c.images for c in plan.cells)), "", "", _count(plan.total_nfe), _duration(plan.total_seconds)]
    if gpu:
        total.append(_duration(plan.total_gpu_seconds))
    lines.append("| " + " | ".join(total) + " |")
    notes = [
        "NFE = network evaluations per image (classifier = 1, one purification = the defense's cost()); "
        "K = votes per decision (1 for a deterministic defense).",
        "judge = the K-vote decisions of the real defense the success rule asks for (N judged: iterates or "
        "AutoAttack runs judged per image).",
        "Upper bounds: every image counted as attacked and never broken; early exits (a broken image leaves the "
        "attack and the judge) only lower the cost. Cells without that mark (the final rule) cost exactly this.",
    ]
    if plan.total_seconds is not None:
        notes.append(f"Times: calibrated on {plan.device} with batches of {plan.batch_images} images, one worker; "
                     "divide by the number of parallel workers for wall time.")
    if gpu:
        notes.append("GPU times: FLOPs of the calibration passes / (datasheet FP32 peak x efficiency); "
                     "see bench/plan.py for the table and its sources.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


@main.command("plan")
@click.argument("job", type=click.Path(dir_okay=False))
@data_dir_option
@model_dir_option
@click.option("--gpu", default=None, metavar="NAME",
              help="Also project the time to this GPU by FLOP count (T4, V100, A100, A10, L4, L40S, RTX4090, "
                   "H100-SXM, H100-PCIE).")
@click.option("--gpu-efficiency", type=click.FloatRange(0.01, 1.0), default=0.4, show_default=True,
              help="Share of the GPU's FP32 peak assumed reachable.")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Time the networks on this machine (builds the job's models); --no-calibrate only counts.")
@click.option("--calibration-images", type=click.IntRange(min=1), default=None,
              help="Images per calibration pass [default: the job's batch_size].")
@click.option("--results", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Save the estimate under DIR/runs/<run>/plan.json, so `bench status` compares it with the run.")
@translate_errors
def plan_cmd(job: str, data_dir: str | None, model_dir: str | None, gpu: str | None, gpu_efficiency: float,
             calibrate: bool, calibration_images: int | None, results: Path | None) -> None:
    """Tasks, images, network evaluations and estimated time per cell of JOB, and a total, before running it."""
    from bench.plan import GPU_PEAK_FLOPS, plan_job, save_estimate
    from bench.spec import load_job
    from bench.tasks import expand_tasks

    if gpu is not None and gpu not in GPU_PEAK_FLOPS:
        raise BadInput(f"--gpu {gpu!r} is not one of {', '.join(GPU_PEAK_FLOPS)}")
    spec = load_job(job)
    data_dir, model_dir = absolute(data_dir), absolute(model_dir)
    tasks = expand_tasks(spec, data_dir=data_dir)
    plan = plan_job(spec, tasks, calibrate_time=calibrate, data_dir=data_dir, model_dir=model_dir,
                    calibration_images=calibration_images, gpu=gpu, gpu_efficiency=gpu_efficiency)
    click.echo(f"plan of {spec.name} ({job}): {plan.total_tasks} tasks in {len(plan.cells)} cells\n")
    click.echo(render_plan(plan), nl=False)
    if results is not None:
        click.echo(f"saved {save_estimate(results, plan)}", err=True)
