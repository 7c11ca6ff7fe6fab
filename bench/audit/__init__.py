"""Gradient-obfuscation audit of a stored run: ``bench audit RUN`` (issue 7 §6).

Nothing in the field checks an evaluation for gradient obfuscation automatically; this package does
it from a run's stored rows plus a few cheap extra cells, per defense and threat model, following
the checklists of Carlini et al. 2019 (arXiv:1902.06705) and Croce et al. 2022 (arXiv:2202.13711):

(a) adaptive robust accuracy ≤ oblivious (transfer) robust accuracy on the same (image, seed) pairs;
(b) robust accuracy falls to ~0 on an eps ladder and never rises with eps;
(c) half the steps and half the EOT draws change robust accuracy by less than 2 points;
(d) full vs surrogate vs BPDA gradients: the run used the strongest;
(e) vote stability: the share of robust samples won by one vote of K.

Modules, one concern each:

- ``job``     the run's job read back from the catalog (:func:`run_job`), the companion job;
- ``plan``    which extra cells each check needs, and which the run already holds;
- ``measure`` numbers that carry their threat model; exact intervals and McNemar tests (scipy);
- ``checks``  the five checks, pure: rows in, :class:`~bench.audit.checks.Finding` out;
- ``runner``  :func:`audit_run`: read, submit the companion job through ``bench.scheduler.submit``,
  read back, check;
- ``report``  the report as Markdown or JSON.

Usage::

    from bench.audit import audit_run, render
    from bench.scheduler import make_backend
    from bench.store import ResultStore

    report = audit_run(ResultStore("results"), "demo", images=64, backend=lambda: make_backend("serial"))
    print(render(report, "md"))
"""

from bench.audit.checks import CHECKS, FAIL, FLAGS, NA, PASS, WARN, Finding
from bench.audit.job import COMPANION_SUFFIX, companion_name, run_job
from bench.audit.report import AuditReport, render
from bench.audit.runner import AuditError, audit_findings, audit_run

__all__ = [
    "CHECKS", "COMPANION_SUFFIX", "FAIL", "FLAGS", "NA", "PASS", "WARN", "AuditError", "AuditReport", "Finding",
    "audit_findings", "audit_run", "companion_name", "render", "run_job",
]
