"""One cell of the grid on one shard of images: clean decision, attack, adversarial decision, rows.

``evaluate_shard`` is pure (issue 2, part 7): tensors and built plugins in, an Arrow table in
``bench.schema.ROW_SCHEMA`` out (plus the adversarial images when asked). No Ray, no files, no
printing; the worker builds the plugins and the store writes the table.

Protocol (SPEC §3, §4):

1. Clean decision: K purifications through the real defense and a majority vote
   (``bench.voting.predict_with_votes``; a deterministic defense is asked once and its single
   vote is recorded as K votes for the predicted class, so every row's counts sum to K).
2. Only clean-correct images are attacked (``attacked``); a misclassified image is already lost, so
   its adversarial image is the clean one and its adversarial decision is the clean decision.
   A clean-only cell (the ``none`` attack, setting ``clean``) stops here: nothing is attacked.
3. The attack crafts on a ``DefendedModel`` in the cell's gradient mode (``attack.forced_gradient``
   wins, e.g. BPDA+EOT -> ``bpda``), or on the bare classifier for ``setting="oblivious"`` (the
   defense is skipped while crafting, kept for the decision).
4. Adversarial decision: ``attack.run`` receives the judge (``bench.voting.VoteJudge``: K
   purifications through the real defense) and asks it wherever its success rule decides — the
   final iterate, checked iterates, each AutoAttack component's point. The verdict that decided a
   sample is the row's ``adv_pred`` / ``adv_votes``; ``broken_by`` names the component that broke
   it (else the attack type) and ``broken_at`` the iterate (null when unknown); ``success`` is the
   rule the attack applied to this model (``attack.success_rule(model)``).

Randomness: four independent ``RngStream``s: ``clean-votes`` of (seed, clean_key) — the same for
every attack cell of a defense, so its clean decision does not depend on the attack — and, of
(seed, task_id), ``attack-defense``
(defense noise seen by the attack), ``attack`` (the attack's own draws: random start, AutoAttack
seed) and ``adv-votes``. Changing the attack therefore never changes the clean decision.

Network evaluations per image (``net_evals``): forward passes of networks, counting the classifier
as 1 and one purification as ``defense.cost()`` (``surrogate_cost()`` for the surrogate process if
the defense defines it, else ``cost()``; 0 when crafting obliviously). With ``F_clean``, ``F_att``,
``F_adv`` the images forwarded by the clean-vote, attack and judge (adversarial-vote) models — the
judge's forwards during the attack included::

    net_evals_i = F_clean / N * (1 + c) + attacked_i * (F_att * (1 + c_att) + F_adv * (1 + c)) / N_att

Backward passes are not counted separately (one backward costs about two forwards). ``seconds``
splits the wall time the same way, so the column sums to the shard's time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa
import torch
from torch import Tensor, nn

from attacks.base import Attack
from bench.device import autocast
from bench.rng import RngStream
from bench.schema import ROW_SCHEMA, CellInfo
from bench.voting import VoteJudge, as_k_votes, predict_with_votes
from defenses.base import Defense
from defenses.defended import DefendedModel

#: ``clean``: no attack (the ``none`` attack of clean-only cells), the rows hold the clean decision
SETTINGS = ("adaptive", "oblivious", "clean")
#: slack of the eps-ball check, relative to eps (float32 arithmetic of the projection)
BALL_TOLERANCE = 1e-4


@dataclass
class ShardResult:
    """Rows of one task and, when the job asks, its adversarial images.

    Attributes:
        table: One row per image in ``bench.schema.ROW_SCHEMA`` (the store adds the metadata).
        adversarial: float32 (N, C, H, W) in [0,1] on the CPU, row order of ``table``; the clean
            image for samples that were not attacked. None unless ``save_adversarial``.
    """

    table: pa.Table
    adversarial: Tensor | None = None
    #: seconds the worker spent building (or fetching from its cache) the models; set by the worker
    build_seconds: float = 0.0

    def __reduce__(self) -> tuple:
        # Crossing processes (a Ray worker -> the driver) the rows travel as one Arrow IPC stream:
        # rebuilding a table from Ray's per-column Arrow pickling costs the driver ~1 ms per task
        # (37 columns; benchmarks/scale.py), reading the stream ~0.03 ms, and the schema comes back exact.
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.table.schema) as writer:
            writer.write_table(self.table)
        return _shard_result_from_ipc, (sink.getvalue(), self.adversarial, self.build_seconds)


def _shard_result_from_ipc(rows: pa.Buffer, adversarial: Tensor | None, build_seconds: float) -> ShardResult:
    return ShardResult(table=pa.ipc.open_stream(rows).read_all(), adversarial=adversarial, build_seconds=build_seconds)


def net_cost(defense: Defense, mode: str) -> float:
    """Network evaluations of one forward of one image through the model in ``mode`` (classifier = 1,
    one purification = the defense's ``cost()``; the rows' ``net_evals`` and ``bench plan`` count with it)."""
    if mode == "oblivious":
        return 1.0
    if mode == "surrogate" and hasattr(defense, "surrogate_cost"):
        return 1.0 + float(defense.surrogate_cost())
    return 1.0 + float(defense.cost())


def _check_ball(attack: Attack, delta: Tensor, x_adv: Tensor) -> None:
    """Refuse results outside the threat model: a bug there would inflate every robust number."""
    bound = attack.eps * (1 + BALL_TOLERANCE) + 1e-6
    size = delta.flatten(1).abs().amax(1) if attack.norm == "Linf" else delta.flatten(1).norm(dim=1)
    if delta.numel() and float(size.max()) > bound:
        raise RuntimeError(f"{attack!r} returned a perturbation of {attack.norm} size {float(size.max()):.6g} > eps {attack.eps:.6g}")
    if x_adv.numel() and (float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0):
        raise RuntimeError(f"{attack!r} returned images outside [0, 1]")


def evaluate_shard(
    x: Tensor,
    y: Tensor,
    image_ids: list[int] | tuple[int, ...],
    *,
    classifier: nn.Module,
    defense: Defense,
    attack: Attack,
    gradient: str,
    setting: str,
    votes: int,
    seed: int,
    task_id: str,
    cell: CellInfo,
    batch_size: int = 128,
    precision: str = "fp32",
    save_adversarial: bool = False,
    clean_key: str | None = None,
) -> ShardResult:
    """Evaluate one (defense, attack, seed) cell on one shard of images.

    Args:
        x: Clean images (N, C, H, W) float32 in [0,1], on the device the models live on.
        y: Labels (N,) int64.
        image_ids: Dataset indices of the N images (written to the rows).
        classifier: [0,1] images -> logits (replaced by ``defense.classifier`` when set).
        defense: The built defense.
        attack: The built attack (threat model inside: ``attack.norm``, ``attack.eps``).
        gradient: Gradient mode for crafting: ``full``, ``surrogate`` or ``bpda``; overridden by
            ``attack.forced_gradient``; recorded as ``full`` for the oblivious setting (exact
            gradient of the bare classifier).
        setting: ``adaptive`` (craft through the defense) or ``oblivious`` (craft on the classifier).
        votes: K purifications per decision (SPEC §4).
        seed: The run's randomness seed (SPEC §1).
        task_id: Part of every generator's derivation and written to the rows.
        cell: The descriptive columns of the rows (run, dataset, classifier, cell names and configs);
            the threat model's norm/eps and the budget are read from ``attack``.
        batch_size: Images (or image copies) per forward for votes and per attack call. Default 128.
        precision: ``fp32``, ``bf16`` or ``fp16`` (CUDA only). Default ``fp32``.
        save_adversarial: Return the adversarial images. Default False.
        clean_key: Derivation key of the clean votes' randomness; cells of one defense that share
            it share their clean decision (``bench.tasks.clean_key``). Default: ``task_id``.

    Returns:
        :class:`ShardResult`.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting {setting!r} is not one of {SETTINGS}")
    if (setting == "clean") == attack.crafts:
        raise ValueError(f"setting 'clean' goes with the no-op attack only (got {type(attack).__name__}, setting {setting!r})")
    n = x.shape[0]
    if y.shape != (n,) or len(image_ids) != n:
        raise ValueError(f"x has {n} images but y has shape {tuple(y.shape)} and image_ids {len(image_ids)} entries")
    device = x.device
    defense.eval()
    mode = "oblivious" if setting != "adaptive" else (attack.forced_gradient or gradient)
    recorded_gradient = {"oblivious": "full", "clean": "none"}.get(setting, mode)

    def defended(stream: str, model_mode: str, key: str = task_id) -> DefendedModel:
        # eval() on the wrapper too: helpers that restore the caller's train/eval flag
        # (predict_with_votes, the AutoAttack wrapper) must restore eval, or BatchNorm layers of a
        # cached classifier would switch to batch statistics and overwrite their running averages.
        model = DefendedModel(classifier, defense, model_mode, RngStream(seed, key, stream))
        return model.eval()

    with autocast(precision, device):
        # 1. clean decision by K votes (the vote model's mode is irrelevant: voting uses purify)
        start = time.perf_counter()
        clean_model = defended("clean-votes", "bpda", clean_key or task_id)
        clean_pred, clean_votes = predict_with_votes(clean_model, x, votes, batch_size)
        clean_votes = as_k_votes(clean_votes, votes)
        t_clean = time.perf_counter() - start

        # 2-4. attack the clean-correct images only; the judge (K votes of the real defense) decides
        start = time.perf_counter()
        attacked = (clean_pred == y) & attack.crafts
        idx = attacked.nonzero().flatten()
        x_adv = x.detach().clone()
        attack_model = defended("attack-defense", mode)
        adv_model = defended("adv-votes", "bpda")
        judge = VoteJudge(adv_model, votes, batch_size, num_classes=clean_votes.shape[1])
        adv_pred, adv_votes = clean_pred.clone(), clean_votes.clone()
        broken_by: list[str | None] = [None] * n
        broken_at: list[int | None] = [None] * n
        if idx.numel():
            attack_rng = RngStream(seed, task_id, "attack")
            for chunk in idx.split(batch_size):
                out = attack.run(attack_model, x[chunk], y[chunk], attack_rng.next(device), judge)
                x_adv[chunk] = out.x_adv.detach().to(x.dtype)
                adv_pred[chunk], adv_votes[chunk] = out.pred, out.votes.to(adv_votes.dtype)
                for i, p in enumerate(chunk.tolist()):
                    broken_by[p], broken_at[p] = out.broken_by[i], out.broken_at[i]
        t_attack = time.perf_counter() - start

    delta = (x_adv - x).float()
    _check_ball(attack, delta, x_adv)
    n_att = int(idx.numel())
    c = float(defense.cost())
    evals = torch.full((n,), clean_model.images_forwarded * (1.0 + c) / n, dtype=torch.float64)
    seconds = torch.full((n,), t_clean / n, dtype=torch.float64)
    if n_att:
        att = attack_model.images_forwarded * net_cost(defense, mode) + adv_model.images_forwarded * (1.0 + c)
        evals[idx.cpu()] += att / n_att
        seconds[idx.cpu()] += t_attack / n_att

    clean_correct = (clean_pred == y).cpu()
    adv_pred_cpu = adv_pred.cpu()
    robust = clean_correct & (adv_pred_cpu == y.cpu())
    broken = attacked.cpu() & ~robust
    budget = attack.budget()
    constant = {
        "task_id": task_id, "run": cell.run, "dataset": cell.dataset, "split": cell.split,
        "classifier": cell.classifier, "norm": attack.norm, "eps": float(attack.eps),
        "defense": cell.defense, "defense_type": cell.defense_type, "defense_config": cell.defense_config,
        "attack": cell.attack, "attack_type": cell.attack_type, "attack_config": cell.attack_config,
        "steps": budget.steps, "eot": budget.eot, "restarts": budget.restarts,
        "success": attack.success_rule(attack_model),
        "setting": setting, "gradient": recorded_gradient, "votes": int(votes), "seed": int(seed),
    }
    columns = {name: [value] * n for name, value in constant.items()}
    columns.update({
        "image_id": [int(i) for i in image_ids],
        "label": y.cpu().tolist(),
        "clean_pred": clean_pred.cpu().tolist(),
        "clean_votes": clean_votes.cpu().tolist(),
        "clean_correct": clean_correct.tolist(),
        "attacked": attacked.cpu().tolist(),
        "adv_pred": adv_pred_cpu.tolist(),
        "adv_votes": adv_votes.cpu().tolist(),
        "robust": robust.tolist(),
        "broken_by": [(by or cell.attack_type) if b else None for b, by in zip(broken.tolist(), broken_by)],
        "broken_at": [at if b else None for b, at in zip(broken.tolist(), broken_at)],
        "linf": delta.flatten(1).abs().amax(1).cpu().tolist() if n else [],
        "l2": delta.flatten(1).norm(dim=1).cpu().tolist() if n else [],
        "net_evals": evals.tolist(),
        "seconds": seconds.tolist(),
    })
    table = pa.Table.from_pydict(columns, schema=ROW_SCHEMA)
    return ShardResult(table=table, adversarial=x_adv.detach().cpu() if save_adversarial else None)
