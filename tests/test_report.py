"""`bench report` / `bench leaderboard` / `bench.api` on a stored two-run results directory, and the
report in a real headless Chromium (Debian's `chromium`, driven by playwright; never a downloaded browser)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from bench import api
from bench.cli import main
from bench.evaluate import ShardResult
from bench.leaderboard import WORST_CASE
from bench.scheduler import SerialBackend, submit
from bench.schema import ROW_SCHEMA
from bench.store import ResultStore
from bench.tasks import Resources, Task
from result_rows import cell_rows

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# attack cell -> (row fields, how much it leaves robust beyond the defense's own strength)
ATTACKS = {
    "pgd": ({"eps": 8 / 255}, 0.0),
    "bpda": ({"eps": 8 / 255, "attack_type": "bpda-eot", "gradient": "bpda", "eot": 2}, 0.1),
    "pgd-4": ({"eps": 4 / 255}, 0.25),
    "pgd-l2": ({"norm": "L2", "eps": 0.5, "steps": 20, "restarts": 2}, 0.15),
    "pgd-obl": ({"eps": 8 / 255, "setting": "oblivious", "gradient": "full"}, 0.35),
}
# not in order of strength, so the tables' first-appearance order is not already sorted by accuracy
DEFENSES = {"lp": ("lowpass", 0.8, 0.3), "none": ("none", 0.92, 0.02), "dp": ("diffpure", 0.85, 0.5)}
N_IMAGES = 24


def _flags(key: str, p: float, n: int) -> list[int]:
    return (np.random.default_rng(zlib.crc32(key.encode())).random(n) < p).astype(int).tolist()


def _rows_task(task: Task, *, data_dir=None, model_dir=None) -> ShardResult:
    """Deterministic rows of one task: a clean decision per (defense, image), robust per (attack, seed)."""
    p = task.payload
    defense_type, clean_p, strength = DEFENSES[task.defense]
    clean = [_flags(f"{task.defense}-{i}", clean_p, 1)[0] for i in task.image_ids]
    if p["setting"] == "clean":
        rows = cell_rows(task.defense, task.attack, task.seed, clean, setting="clean", run=task.run,
                         defense_type=defense_type, image_ids=task.image_ids, task_id=task.task_id)
    else:
        fields, bonus = ATTACKS[task.attack]
        robust = _flags(f"{task.defense}-{task.attack}-{task.seed}-{task.shard}", strength + bonus, len(task.image_ids))
        robust = [r * c for r, c in zip(robust, clean)]
        rows = cell_rows(task.defense, task.attack, task.seed, robust, clean=clean, run=task.run,
                         defense_type=defense_type, image_ids=task.image_ids, task_id=task.task_id,
                         net_evals=10.0 + 5 * len(task.defense), seconds=0.01 * (1 + len(task.attack)), **fields)
    return ShardResult(table=pa.Table.from_pylist(rows, schema=ROW_SCHEMA), adversarial=None)


def _tasks(run: str, defenses: list[str], attacks: list[str], seeds: list[int], setting: str | None = None) -> list[Task]:
    tasks = []
    for d in defenses:
        for a in attacks:
            for s in seeds:
                for shard in range(2):
                    ids = tuple(range(shard * N_IMAGES // 2, (shard + 1) * N_IMAGES // 2))
                    tasks.append(Task(task_id=f"{run}-{d}-{a}-{s}-{shard}", run=run, defense=d, attack=a, seed=s,
                                      shard=shard, image_ids=ids,
                                      payload={"setting": setting or ATTACKS[a][0].get("setting", "adaptive")},
                                      resources=Resources(cpus=1.0)))
    return tasks


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report") / "results"
    store = ResultStore(root)
    backend = SerialBackend(fn=_rows_task)
    submit("grid", {}, _tasks("grid", list(DEFENSES), list(ATTACKS), [0, 1]), store, backend, progress=False)
    submit("clean", {}, _tasks("clean", ["none", "lp"], ["clean"], [0], setting="clean"), store, backend,
           progress=False)
    return root


@pytest.fixture(scope="module")
def site(results, tmp_path_factory) -> Path:
    """``bench report grid clean --out DIR``: the path of its index.html."""
    out = tmp_path_factory.mktemp("site") / "report"
    result = CliRunner().invoke(main, ["report", "grid", "clean", "--results", str(results), "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = Path(result.output.strip())
    assert index == out / "index.html"
    return index


def _md_body_rows(md: str) -> int:
    return sum(1 for ln in md.splitlines()
               if ln.startswith("| ") and not ln.startswith("| defense |"))


def test_api_load_and_leaderboard_match_the_cli(results):
    rows = api.load(["grid", "clean"], results)
    assert len(rows) == len(DEFENSES) * len(ATTACKS) * 2 * N_IMAGES + 2 * N_IMAGES
    assert list(rows.columns) == ROW_SCHEMA.names
    table = api.leaderboard(["grid", "clean"], results)
    assert (table.reference == "none").all()
    md = CliRunner().invoke(main, ["leaderboard", "grid", "clean", "--results", str(results)])
    assert md.exit_code == 0, md.output
    assert _md_body_rows(md.output) == len(table)
    # Linf 8/255, Linf 4/255, L2 0.5 adaptive, Linf 8/255 oblivious, clean: five tables, a worst case per
    # defense in each of the four attack tables
    assert md.output.count("\n#### ") == 5
    assert (table.attack == WORST_CASE).sum() == 4 * len(DEFENSES)
    assert md.output.startswith("### grid: 60/60 tasks done; clean: 4/4 tasks done")


@pytest.mark.parametrize("fmt", ["json", "latex", "csv"])
def test_cli_formats(results, fmt):
    out = CliRunner().invoke(main, ["leaderboard", "grid", "--results", str(results), "--format", fmt])
    assert out.exit_code == 0, out.output
    assert {"json": '"rows": [', "latex": r"\begin{tabular}", "csv": "dataset,split,classifier,norm,eps"}[fmt] in out.output


def test_reference_is_checked_and_labelled(results):
    runner = CliRunner()
    bad = runner.invoke(main, ["leaderboard", "grid", "--results", str(results), "--reference", "lp12"])
    assert bad.exit_code == 2
    assert "unknown reference defense 'lp12'; allowed: lp, none, dp" in bad.output
    ok = runner.invoke(main, ["leaderboard", "grid", "--results", str(results), "--reference", "lp"])
    assert ok.exit_code == 0 and "| p vs lp |" in ok.output and "- p vs lp: " in ok.output
    assert "vs none" not in ok.output
    none = runner.invoke(main, ["leaderboard", "grid", "--results", str(results), "--reference", ""])
    assert none.exit_code == 0 and "| p |" in none.output and "p vs" not in none.output
    unknown_run = runner.invoke(main, ["report", "nope", "--results", str(results)])
    assert unknown_run.exit_code == 2 and "unknown run 'nope'" in unknown_run.output


def test_report_is_a_self_contained_site(site):
    index = site
    pages = sorted(p.name for p in index.parent.glob("defense-*.html"))
    assert pages == ["defense-dp.html", "defense-lp.html", "defense-none.html"]
    for page in [index, *index.parent.glob("defense-*.html")]:
        text = page.read_text()
        assert "<script src" not in text and "stylesheet" not in text  # inlined, nothing to fetch
        for src in re.findall(r'<img src="([^"]+)"', text):
            assert (index.parent / src).is_file(), src
        # the only remote addresses are plain links to papers
        assert set(re.findall(r'(?:src|href)="(https?://[^/"]+)', text)) <= {"https://arxiv.org"}
    lp = (index.parent / "defense-lp.html").read_text()
    assert {"img/lp-robust.png", "img/lp-eps.png", "img/lp-agreement.png", "img/lp-cost.png"} <= set(
        re.findall(r'<img src="([^"]+)"', lp))


def _browser_or_fail():
    if shutil.which(CHROMIUM) is None and not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("the playwright package is missing in CI (it is in the 'test' extra)")
        pytest.skip("playwright not installed (pip install playwright)")
    return sync_playwright


@pytest.mark.slow
def test_report_in_headless_chromium(results, site):
    sync_playwright = _browser_or_fail()
    index = site
    md = CliRunner().invoke(main, ["leaderboard", "grid", "clean", "--results", str(results)]).output
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS)
        problems: list[str] = []
        page = browser.new_page()
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(f"remote: {r.url}"))

        page.goto(index.as_uri())
        assert page.locator("table.lb tbody tr").count() == _md_body_rows(md)

        # sorting by robust accuracy reorders the rows of a table, ascending then descending
        section = page.locator("section.tm", has=page.locator("h2", has_text="Linf eps = 8/255 · adaptive"))
        table = section.locator("table.lb")  # pgd, bpda, worst case for each of the 3 defenses
        def robust_values() -> list[float]:
            col = [h.strip() for h in table.locator("thead th").all_inner_texts()].index("robust acc")
            cells = table.locator(f"tbody tr td:nth-child({col + 1})")
            return [float(v) for v in cells.evaluate_all("tds => tds.map(td => td.dataset.value)")]
        def row_keys() -> list[str]:
            return table.locator("tbody tr").evaluate_all("trs => trs.map(tr => tr.cells[0].innerText + '|' + tr.cells[1].innerText)")
        before_values, before_rows = robust_values(), row_keys()
        assert before_values != sorted(before_values)  # the fixture's order is not already sorted
        table.locator("thead th button", has_text="robust acc").click()
        after = robust_values()
        assert after == sorted(before_values) and row_keys() != before_rows
        table.locator("thead th button", has_text="robust acc").click()
        assert robust_values() == sorted(before_values, reverse=True) and row_keys() != before_rows

        # filtering hides the other rows
        section.locator("input.filter").fill("bpda")
        visible = table.locator("tbody tr:visible")
        assert visible.count() == len(DEFENSES) and all("bpda" in t for t in visible.all_inner_texts())

        # every defense page loads its plots
        for name in ("none", "lp", "dp"):
            page.goto((index.parent / f"defense-{name}.html").as_uri())
            images = page.locator("img")
            assert images.count() >= 3
            widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert all(w > 0 for w in widths), (name, widths)
        browser.close()
    assert problems == []
