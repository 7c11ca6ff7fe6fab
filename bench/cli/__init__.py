"""The ``bench`` command line: a thin click layer over the library.

Each command parses its options, calls one library function and formats the answer; options shared
by several commands are defined once (``bench/cli/common.py``). One module per concern:

    bench list defenses|attacks|classifiers|datasets|backbones      bench/cli/plugins.py
    bench submit JOB ... / bench status [RUN]                        bench/cli/run.py
    bench leaderboard [RUN...] / bench report [RUN...]               bench/cli/results.py
    bench train denoiser|irad|sar ...                                bench/cli/train.py
    bench audit RUN ...                                              bench/cli/audit.py
    bench data fetch|check ...                                       bench/cli/data.py
    bench plan JOB ...                                               bench/cli/plan.py
    bench sweep JOB --param PATH=V1,V2,...                           bench/cli/sweep.py
"""

from bench.cli.common import BadInput, main, translate_errors
from bench.cli import audit, data, plan, plugins, results, run, sweep, train  # noqa: F401  (each attaches its commands to main)
from bench.cli.train import LazyGroup

__all__ = ["BadInput", "LazyGroup", "main", "translate_errors"]
