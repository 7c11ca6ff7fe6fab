"""The report's plots and files on hand-made rows: what each figure draws, and which files a report leaves."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.leaderboard import WORST_CASE, leaderboard
from bench.report import plots
from result_rows import cell_rows, frame


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, in order (the PNGs are still written)."""
    saved = []
    save = plots._save

    def keep(fig, path):
        saved.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def _ladder_rows() -> pd.DataFrame:
    """lp at 4/255 and 8/255 under one PGD budget judged by two success rules (cells named per eps)."""
    cells = []
    for eps, final, anyof in ((4, [1, 1, 1, 0], [1, 1, 0, 0]), (8, [1, 1, 0, 0], [1, 0, 0, 0])):
        for success, flags in (("final", final), ("any", anyof)):
            config = json.dumps({"eps": eps / 255, "norm": "Linf", "success": success}, sort_keys=True)
            cells.append(cell_rows("lp", f"pgd-{success}-{eps}", 0, flags, eps=eps / 255, success=success,
                                   attack_config=config, defense_type="lowpass"))
    return frame(*cells)


def test_eps_ladder_draws_one_line_per_attack_identity(figures, tmp_path):
    """``final`` and ``any`` with the same budget are two lines (not one zig-zag), each over both eps."""
    table = leaderboard(_ladder_rows())
    assert plots.eps_ladder(table, tmp_path / "eps.png").is_file()
    (ax,) = figures[0].axes
    lines = {bars.get_label(): list(bars.lines[0].get_xdata()) for bars in ax.containers}  # one per errorbar()
    assert len(lines) == 3 and WORST_CASE in lines
    assert all(x == pytest.approx([4, 8]) for x in lines.values())
    assert any("success final" in label for label in lines) and any("success any" in label for label in lines)
    assert "cifar10" in ax.get_title() and "resnet20" in ax.get_title()


def test_axis_labels_name_the_dataset_and_classifier(figures, tmp_path):
    rows = frame(cell_rows("lp", "pgd", 0, [1, 0], defense_type="lowpass"),
                 cell_rows("lp", "pgd", 0, [1, 1], defense_type="lowpass", classifier="resnet56"),
                 cell_rows("lp", "bpda", 0, [0, 1], defense_type="lowpass", classifier="resnet56"))
    table = leaderboard(rows)
    plots.robust_per_attack(table, tmp_path / "robust.png")
    plots.cost(table, tmp_path / "cost.png")
    plots.attack_agreement(rows, tmp_path / "agreement.png")
    robust, cost, agreement = figures
    for ax in (robust.axes[0], cost.axes[0]):
        ticks = [t.get_text() for t in ax.get_yticklabels()]
        assert any("resnet20" in t for t in ticks) and any("resnet56" in t for t in ticks)
        assert all("cifar10" in t for t in ticks)
    assert "resnet56" in agreement.axes[0].get_title() and "cifar10" in agreement.axes[0].get_title()


def test_a_report_removes_its_own_earlier_pages_and_plots_only(tmp_path):
    """A defense no longer in the runs has no page or plot left from an earlier report in the same
    folder; files bench did not name are kept."""
    from bench.report import write_report

    def rows_of(*defenses):
        return frame(*[cell_rows(d, a, 0, flags, defense_type="lowpass")
                       for d in defenses for a, flags in (("pgd", [1, 0, 1]), ("bpda", [0, 1, 1]))])

    both = rows_of("lp", "old")
    write_report(both, leaderboard(both), tmp_path, title="t", reference=None)
    assert (tmp_path / "defense-old.html").is_file() and (tmp_path / "img" / "old-robust.png").is_file()
    (tmp_path / "notes.html").write_text("mine")
    (tmp_path / "img" / "photo.png").write_bytes(b"mine")
    one = rows_of("lp")
    write_report(one, leaderboard(one), tmp_path, title="t", reference=None)
    assert sorted(p.name for p in tmp_path.glob("defense-*.html")) == ["defense-lp.html"]
    assert not list((tmp_path / "img").glob("old-*")) and (tmp_path / "img" / "lp-robust.png").is_file()
    assert (tmp_path / "notes.html").read_text() == "mine" and (tmp_path / "img" / "photo.png").read_bytes() == b"mine"
    assert "defense-old.html" not in (tmp_path / "index.html").read_text()
