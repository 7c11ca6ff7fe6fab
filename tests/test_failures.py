"""`bench status` failure summaries (``bench.store.summarize``): exception type, whole message and the
raising file, from a traceback."""

from __future__ import annotations

import traceback

from bench.store import summarize as _summarize


def summarize(text: str, **kw) -> str:
    return _summarize(text).describe(**kw)


def _raise_nested() -> str:
    def load(path: str) -> None:
        raise ValueError(f"{path}: first line\nsecond line")

    try:
        try:
            load("ck.pt")
        except ValueError as exc:
            raise RuntimeError("while building the defense 'irad'") from exc
    except RuntimeError:
        return traceback.format_exc()
    raise AssertionError("unreachable")


def test_last_exception_with_its_whole_message_and_location():
    def load(path: str) -> None:
        raise FileNotFoundError(f"checkpoint {path} does not exist\n(resolved to /abs/{path})")

    try:
        load("ck.pt")
    except FileNotFoundError:
        text = traceback.format_exc()
    summary = summarize(text)
    assert summary.startswith("FileNotFoundError: checkpoint ck.pt does not exist / (resolved to /abs/ck.pt) (at ")
    assert "test_failures.py:" in summary and summary.endswith(" in load)")
    assert text.strip().splitlines()[-1] == "(resolved to /abs/ck.pt)"  # what status showed before


def test_chained_exceptions_report_the_last_one():
    summary = summarize(_raise_nested())
    assert summary.startswith("RuntimeError: while building the defense 'irad' (at ")
    assert "in _raise_nested)" in summary


def test_other_text_and_long_messages():
    assert summarize("system failure after 3 retries: WorkerCrashedError()") == \
        "system failure after 3 retries: WorkerCrashedError()"
    long = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    g()\nValueError: ' + "a" * 1000
    summary = summarize(long, max_chars=400)
    assert "a" * 380 in summary and "a" * 400 not in summary and "..." in summary and summary.endswith("(at x.py:1 in f)")
