"""Attack strength: what the decision rule changes (issue 7), on the stand-in and the demo defenses.

For each defense it runs, through ``bench.evaluate.evaluate_shard`` on real CIFAR-10 images:

- AutoAttack-rand, ``old`` (pyautoattack decides with one forward of the attacked model and returns
  the clean image for samples it did not flag; ``evaluate_shard`` K-votes that output — the code
  before issue 7) against ``new`` (``AutoAttackRand.run``: each APGD component's best-loss point
  judged by K votes of the real defense on a stochastic defense; the library's exact semantics on a
  deterministic one);
- PGD-EOT and BPDA+EOT with ``success: final`` against ``success: any`` (every iterate judged);
- early exit: on a deterministic defense whose forward is the real decision, ``new`` keeps the first
  breaking iterate and stops attacking it, ``all-steps`` runs every step and judges the last
  (the code before issue 7); the table gives the forward+backward passes saved.

Columns: robust accuracy over the images (clean-wrong ones count as not robust), the success rule
the rows record, classifier forward+backward passes per attacked image (the attack's gradient
evaluations; EOT copies count one each), forward-only passes per attacked image (the judge's votes
during and after the attack), wall seconds of the cell. The stand-in is the test suite's Gaussian
noise defense (``tests/noisy_defense.py``, sigma 0.04) in front of ResNet-20 at a small eps (the
figures of issue 7 §1-2 use 96 images, eps 1/255, K = 10, 20 iterations, 4 EOT draws: the defaults).
The demo defenses come from the job file with its classifier, eps, votes and attack budgets; their
models are trained by ``bash scripts/demo.sh`` into ``$BENCH_CACHE_DIR/models`` (default
``.cache/models``) — a defense whose files are missing is skipped with that hint.

Run: ``python benchmarks/attack_strength.py [--job jobs/demo.yaml] [--images 32] [--standin-images 96]
[--threads 1] [--only standin|demo]``. Timings depend on the machine's load: compare the pass counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the stand-in defense
import noisy_defense  # noqa: E402,F401  (registers the test-only ``noisy`` defense)

from attacks.base import Attack  # noqa: E402
from bench.datasets import data_dir  # noqa: E402
from bench.evaluate import evaluate_shard  # noqa: E402
from bench.registry import ATTACKS, DEFENSES  # noqa: E402
from bench.schema import CellInfo  # noqa: E402
from bench.worker import build_classifier, build_dataset  # noqa: E402


class CountingClassifier(nn.Module):
    """Counts the images it classifies: with a graph (an attack's forward+backward) or without."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.with_grad, self.without_grad = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.with_grad += x.shape[0]
        else:
            self.without_grad += x.shape[0]
        return self.inner(x)


def old_rule(attack_type: str, **params: Any) -> Attack:
    """The attack as before issue 7: its own ``perturb`` (pyautoattack's decisions by one forward;
    PGD/BPDA: every step), then one K-vote of the result (``Attack.run``)."""
    cls = ATTACKS.get(attack_type)
    rule = "library" if attack_type == "autoattack" else "final"
    return type(f"Old{cls.__name__}", (cls,), {"run": Attack.run, "success_rule": lambda self, model: rule})(**params)


def cell(classifier: nn.Module, defense: nn.Module, attack: Attack, attack_type: str, gradient: str,
         x: torch.Tensor, y: torch.Tensor, ids: list[int], votes: int, seed: int) -> dict[str, Any]:
    """One cell through ``evaluate_shard``, counting the classifier's passes."""
    own = getattr(defense, "classifier", None)  # SAR brings its own classifier
    counter = CountingClassifier(own if own is not None else classifier)
    if own is not None:
        defense.classifier = counter
    info = CellInfo(run="bench", dataset="cifar10", split="test", classifier="c", defense="d", defense_type="d",
                    defense_config="{}", attack=attack_type, attack_type=attack_type, attack_config="{}")
    start = time.perf_counter()
    try:
        rows = evaluate_shard(x, y, ids, classifier=counter, defense=defense, attack=attack, gradient=gradient,
                              setting="adaptive", votes=votes, seed=seed, task_id=f"attack-strength-{seed}",
                              cell=info).table.to_pylist()
    finally:
        if own is not None:
            defense.classifier = own
    seconds = time.perf_counter() - start
    attacked = max(1, sum(r["attacked"] for r in rows))
    clean_forwards = len(rows) * (votes if defense.stochastic else 1)
    return {"robust": sum(r["robust"] for r in rows) / len(rows), "success": rows[0]["success"],
            "fwbw": counter.with_grad / attacked, "fwd": (counter.without_grad - clean_forwards) / attacked,
            "seconds": seconds}


def compare(name: str, classifier: nn.Module, defense: nn.Module, budgets: dict[str, dict[str, Any]],
            x: torch.Tensor, y: torch.Tensor, ids: list[int], votes: int, seed: int) -> Iterator[str]:
    """The table rows of one defense, as they are measured."""
    aa, pgd, bpda = budgets["autoattack"], budgets["pgd-eot"], budgets["bpda-eot"]
    variants = [("autoattack", "old (library decides)", old_rule("autoattack", **aa)),
                ("autoattack", "new (judge decides)", ATTACKS.create("autoattack", **aa))]
    for attack_type, params in (("pgd-eot", pgd), ("bpda-eot", bpda)):
        for rule in ("final", "any"):
            variants.append((attack_type, f"success {rule}", ATTACKS.create(attack_type, **{**params, "success": rule})))
        if not defense.stochastic:
            variants.append((attack_type, "all steps (no early exit)", old_rule(attack_type, **params)))
    results = {}
    for attack_type, label, attack in variants:
        mode = budgets.get(f"gradient:{name}:{attack_type}", "bpda" if attack_type == "bpda-eot" else "full")
        r = cell(classifier, defense, attack, attack_type, mode, x, y, ids, votes, seed)
        results[(attack_type, label)] = r
        yield (f"| {name} | {attack_type} | {label} | {r['success']} | {100 * r['robust']:.1f} | "
               f"{r['fwbw']:.1f} | {r['fwd']:.1f} | {r['seconds']:.1f} |")
    for attack_type in ("pgd-eot", "bpda-eot"):
        old, new = results.get((attack_type, "all steps (no early exit)")), results.get((attack_type, "success final"))
        if old:
            saved = 1 - new["fwbw"] / old["fwbw"] if old["fwbw"] else 0.0
            yield (f"| {name} | {attack_type} | early exit saves | | | {100 * saved:.0f}% of fwd+bwd | | "
                   f"{100 * (1 - new['seconds'] / old['seconds']):.0f}% of time |")


def demo_cells(job: Path) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any] | None, list[str]]:
    """(name, config) of the job's defense cells whose model files exist, the payload of its first
    task (dataset, classifier, votes, ...) with the adaptive attack budgets, and messages."""
    from bench.spec import load_job
    from bench.tasks import expand_tasks

    try:
        tasks = expand_tasks(load_job(job))
    except Exception as exc:  # noqa: BLE001 - e.g. a job validator that checks the model files exist
        return [], None, [f"cannot load {job}: {exc}", MODELS_HINT]
    cells, budgets, notes = {}, {}, []
    for task in tasks:
        p = task.payload
        cells.setdefault(p["defense"]["name"], p["defense"]["config"])
        a = p["attack"]
        if p["setting"] == "adaptive" and a["params"].get("version", "rand") == "rand":
            budgets.setdefault(a["type"], a["params"])
            budgets.setdefault(f"gradient:{p['defense']['name']}:{a['type']}", p["gradient"])
    kept = []
    for name, config in cells.items():
        missing = [path for path in _paths(config) if not Path(path).exists()]
        if missing:
            notes.append(f"defense {name!r} skipped: missing {', '.join(missing)}. {MODELS_HINT}")
        else:
            kept.append((name, config))
    return kept, {**tasks[0].payload, "budgets": budgets}, notes


MODELS_HINT = ("Train the demo models with `bash scripts/demo.sh` (or the `bench train denoiser|irad|sar` "
               "commands it runs; README), which writes them to ${BENCH_CACHE_DIR:-.cache}/models.")


def _paths(value: Any) -> list[str]:
    """Strings in a resolved config that name model files (``.pt`` / ``.pth``)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths(v)]
    return [value] if isinstance(value, str) and value.endswith((".pt", ".pth")) else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=Path, default=Path("jobs/demo.yaml"))
    parser.add_argument("--images", type=int, default=None, help="demo images (default: the job's first shard)")
    parser.add_argument("--standin-images", type=int, default=96)
    parser.add_argument("--standin-eps", type=float, default=1.0, help="in 1/255 units (default 1)")
    parser.add_argument("--standin-votes", type=int, default=10)
    parser.add_argument("--standin-iter", type=int, default=20, help="AA n_iter and PGD/BPDA steps")
    parser.add_argument("--standin-eot", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["standin", "demo"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from bench.datasets import subset_indices

    dataset = build_dataset({"name": "cifar10", "split": "test"}, data_dir())
    print("| defense | attack | variant | success | robust % | fwd+bwd / attacked img | fwd-only / attacked img | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    if args.only != "demo":
        ids = subset_indices(10000, 512, 0)[: args.standin_images]
        x, y = dataset.images(ids)
        clf = build_classifier({"name": "resnet20"}, torch.device("cpu"), data_dir() / "weights")
        eps, n, eot = args.standin_eps / 255, args.standin_iter, args.standin_eot
        budgets = {"autoattack": {"eps": eps, "n_iter": n, "eot_iter": eot},
                   "pgd-eot": {"eps": eps, "steps": n, "step_size": eps / 4, "eot": eot},
                   "bpda-eot": {"eps": eps, "steps": n, "step_size": eps / 4, "eot": eot}}
        for line in compare("stand-in (noisy 0.04)", clf, DEFENSES.create("noisy", sigma=0.04), budgets, x, y, ids,
                            args.standin_votes, args.seed):
            print(line, flush=True)
    if args.only != "standin":
        from bench.worker import build_defense

        cells, payload, notes = demo_cells(args.job)
        for note in notes:
            print(f"<!-- {note} -->", flush=True)
        if payload is not None:
            ids = list(payload["image_ids"]) if args.images is None else subset_indices(10000, 512, 0)[: args.images]
            x, y = dataset.images(ids)
            clf = build_classifier(payload["classifier"], torch.device("cpu"), data_dir() / "weights")
            for name, config in cells:
                defense = build_defense(config, torch.device("cpu"))
                for line in compare(name, clf, defense, payload["budgets"], x, y, ids, payload["votes"], args.seed):
                    print(line, flush=True)


if __name__ == "__main__":
    main()
