"""Text renderings of a leaderboard table (:func:`bench.leaderboard.leaderboard`): md, csv, json, latex.

Markdown and LaTeX print one table per threat model under a line naming it (dataset, split,
classifier, norm, eps, setting), one row per defense x attack with the attack's budget, then the
footnotes saying what every number is (:func:`notes`). CSV and JSON carry every column of the table
(threat model and budget in every row, accuracies as fractions in [0, 1]), so CSVs of several runs
can be concatenated and still be grouped by threat model.
"""

from __future__ import annotations

import json
import math
import re
from typing import Callable

import pandas as pd

from bench.leaderboard import CLEAN_SETTING, DEFAULT_REFERENCE, STD_DDOF, WORST_CASE, reference_choices, threat_models
from bench.stats import BOOTSTRAP, BOOTSTRAP_EXACT, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE

FORMATS = ("md", "csv", "json", "latex")
_CI_MARK = {BOOTSTRAP: " (b)", BOOTSTRAP_EXACT: " (b+e)"}


# -- cells ---------------------------------------------------------------------------------------------
def format_eps(eps: float, norm: str | None = None) -> str:
    """An eps as papers write it; blank for NaN.

    ``Linf``: in grey levels (``8/255``, ``0.25/255``); ``L2``: the number (``0.5``, ``1``); no norm
    given: ``8/255`` when eps is a whole number of 1/255 steps, else the number.
    """
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return ""
    steps = eps * 255
    if norm == "Linf":
        return f"{steps:.4g}/255"
    if norm is None and abs(steps - round(steps)) < 1e-6 and round(steps):
        return f"{round(steps)}/255"
    return f"{eps:.4g}"


def threat_model_title(tm: tuple) -> str:
    """``cifar10 (test) · classifier resnet20 · Linf eps = 8/255 · adaptive attacks``."""
    dataset, split, classifier, norm, eps, setting = tm
    head = f"{dataset} ({split}) · classifier {classifier}"
    if setting == CLEAN_SETTING:
        return f"{head} · clean accuracy (no attack)"
    return f"{head} · {norm} eps = {format_eps(eps, norm)} · {setting} attacks"


def budget_text(row: pd.Series) -> str:
    """``10 steps x 4 EOT, 1 restart, success final, gradient surrogate, K = 5`` (worst case / clean: a
    word, then K): the attack's budget and the votes per decision of the defense it was judged by."""
    votes = f", K = {row['votes']}"
    if row["attack"] == WORST_CASE:
        return "every attack above" + votes
    if row["setting"] == CLEAN_SETTING:
        return "no attack" + votes
    restarts = f"{row['restarts']} restart" + ("" if str(row["restarts"]) == "1" else "s")
    return (f"{row['steps']} steps x {row['eot']} EOT, {restarts}, success {row['success']}, "
            f"gradient {row['gradient']}{votes}")


def pct(x: float) -> str:
    return "" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def mean_std(mean: float, std: float) -> str:
    return pct(mean) if std is None or math.isnan(std) else f"{pct(mean)} ± {pct(std)}"


def interval(low: float, high: float, method: str) -> str:
    return "" if low is None or math.isnan(low) else f"[{pct(low)}, {pct(high)}]{_CI_MARK.get(method, '')}"


def p_value(p: float) -> str:
    return "" if p is None or math.isnan(p) else f"{p:.2g}"


def paper_id(paper: str) -> str:
    """The arXiv / OpenReview id of a citation (the short form in table cells)."""
    match = re.search(r"(arXiv:\S+|OpenReview \S+)", paper or "")
    return match.group(1).rstrip(".,;)") if match else ""


def table_cells(table: pd.DataFrame, reference: str | None) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by md, latex and the web report (one table of one threat model)."""
    clean_only = (table["setting"] == CLEAN_SETTING).all()
    level = int(CONFIDENCE * 100)
    header = ["defense", "attack", "budget", "n", "seeds", "clean acc", f"clean {level}% CI"]
    if not clean_only:
        header += ["robust acc", f"robust {level}% CI"]
    header += [f"p vs {reference}" if reference else "p", "net evals / img", "s / img", "paper"]
    body = []
    for _, r in table.iterrows():
        cells = [str(r["defense"]), str(r["attack"]), budget_text(r), str(r["n_images"]), str(r["n_seeds"]),
                 mean_std(r["clean_mean"], r["clean_std"]),
                 interval(r["clean_ci_low"], r["clean_ci_high"], r["clean_ci_method"])]
        if not clean_only:
            cells += [mean_std(r["robust_mean"], r["robust_std"]),
                      interval(r["robust_ci_low"], r["robust_ci_high"], r["robust_ci_method"])]
        cells += [p_value(r["p_value"]), f"{r['net_evals_per_image']:.4g}", f"{r['seconds_per_image']:.3g}",
                  paper_id(r["paper"])]
        body.append(cells)
    return header, body


def notes(table: pd.DataFrame, reference: str | None) -> list[str]:
    """The footnotes every rendering carries: what each number is and how it was computed."""
    level = int(CONFIDENCE * 100)
    out = [
        "Accuracies in %. Each table is one threat model: dataset, split, classifier, norm, eps and setting; "
        "nothing is aggregated across tables.",
        f"mean ± std over seeds: the accuracy over the images of each seed, then the mean and the sample std "
        f"(ddof={STD_DDOF}; blank with one seed) of those per-seed accuracies.",
        f"{level}% CI, images the unit: Clopper-Pearson (exact) when every image has the same outcome under all "
        f"its seeds (always with one seed); otherwise (b) a percentile cluster bootstrap over images of the "
        f"per-image rate averaged over seeds ({BOOTSTRAP_RESAMPLES} resamples drawn as multinomial counts of the "
        f"per-image rates, numpy default_rng({BOOTSTRAP_SEED}): the distribution of scipy.stats.bootstrap's "
        f"percentile method); (b+e) where that interval reaches 0 % or 100 % or has zero width, "
        f"its hull with the exact interval of n x mean successes in n images.",
        f"'{WORST_CASE}': an (image, seed) is robust only if it is robust under every attack of the table; "
        f"(image, seed) pairs not covered by every attack are left out; its cost is the sum over the attacks.",
        "budget: iterations x EOT draws per gradient, restarts, success rule (final: the final iterate is judged; "
        "any: broken at the first checked iterate the defense misclassifies) and the gradient mode used to craft; "
        "K: the purifications per decision (clean and adversarial, majority vote; a deterministic defense "
        "decides once).",
        "net evals / img, s / img: network evaluations (classifier = 1, one purification = the defense's cost) "
        "and wall seconds per (image, seed), mean over the cell's rows.",
    ]
    if reference:
        out.append(
            f"p vs {reference}: two-sided paired test against the reference defense '{reference}' on the same "
            f"(image, seed) pairs under the same attack (worst case vs its worst case; clean table: clean "
            f"correctness): exact McNemar with one seed; with several seeds an exact sign-flip permutation test of "
            f"the per-image differences in robust seeds (images the unit, seeds never counted as independent). "
            f"Blank: '{reference}' has no cell with the same attack (name, type, configuration, budget and success "
            f"rule) on those images.")
    elif choices := reference_choices(table["defense"]):
        out.append(
            f"p: blank, no reference defense: the runs' '{DEFAULT_REFERENCE}' cells differ or measured the same "
            f"samples by different tasks, so there is no single '{DEFAULT_REFERENCE}'; for paired tests pass "
            + " or ".join(f"--reference '{c}'" for c in choices) + ".")
    papers = table.drop_duplicates("defense")[["defense", "paper"]]
    cited = [f"{d}: {p}" for d, p in papers.itertuples(index=False) if p]
    if cited:
        out.append("paper: " + "; ".join(cited) + ".")
    return out


# -- formats ---------------------------------------------------------------------------------------------
def to_markdown(table: pd.DataFrame, *, title: str | None = None, reference: str | None = None) -> str:
    """GitHub-flavoured Markdown: a header line and a table per threat model, then the footnotes."""
    lines = [f"### {title}", ""] if title else []
    for tm, sub in threat_models(table):
        header, body = table_cells(sub, reference)
        lines += [f"#### {threat_model_title(tm)}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 4) + ["---"]) + "|"]
        for cells in body:
            if cells[1] == WORST_CASE:
                cells[1] = f"**{WORST_CASE}**"
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines + [f"- {n}" for n in notes(table, reference)]) + "\n"


def to_csv(table: pd.DataFrame, **_: object) -> str:
    """Every column, one row per table row; accuracies as fractions in [0, 1], full precision."""
    return table.to_csv(index=False)


def to_json(table: pd.DataFrame, *, title: str | None = None, reference: str | None = None) -> str:
    """``{"title", "reference", "confidence", "notes", "rows": [...]}``; NaN as null."""
    rows = json.loads(table.to_json(orient="records", double_precision=15))
    doc = {"title": title, "reference": reference, "confidence": CONFIDENCE, "notes": notes(table, reference),
           "rows": rows}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return escaped.replace("±", r"$\pm$").replace("·", r"$\cdot$")


def to_latex(table: pd.DataFrame, *, title: str | None = None, reference: str | None = None) -> str:
    """A booktabs ``tabular`` per threat model (needs ``\\usepackage{booktabs}``), then the footnotes."""
    out = [f"% {title}"] if title else []
    for tm, sub in threat_models(table):
        header, body = table_cells(sub, reference)
        spec = "lll" + "r" * (len(header) - 4) + "l"
        out += [r"\begin{table}[t]", r"\centering\scriptsize", rf"\caption{{{latex_escape(threat_model_title(tm))}}}",
                rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
        out += [" & ".join(latex_escape(c) for c in cells) + r" \\" for cells in body]
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    out += [r"\begin{itemize}\footnotesize"] + [rf"\item {latex_escape(n)}" for n in notes(table, reference)]
    return "\n".join(out + [r"\end{itemize}"]) + "\n"


_RENDERERS: dict[str, Callable[..., str]] = {"md": to_markdown, "csv": to_csv, "json": to_json, "latex": to_latex}


def render(table: pd.DataFrame, fmt: str, *, title: str | None = None, reference: str | None = None) -> str:
    """``fmt``: one of :data:`FORMATS`."""
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return _RENDERERS[fmt](table, title=title, reference=reference)


__all__ = [
    "FORMATS", "budget_text", "format_eps", "interval", "latex_escape", "mean_std", "notes", "paper_id", "pct",
    "render", "table_cells", "threat_model_title", "to_csv", "to_json", "to_latex", "to_markdown",
]
