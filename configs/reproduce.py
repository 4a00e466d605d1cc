"""The main job: every experiment of the study and its extensions, then REPORT.md.

    python -m experiments.reproduce --workdir runs/quick                         # minutes on a CPU
    python -m experiments.reproduce --workdir runs/full --config.profile=full    # the real study
    python -m experiments.reproduce --workdir runs/quick --config.only=mlp,l2_sweep
"""

import ml_collections

ENTRY = "experiments.reproduce"  # the command that runs this config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "reproduce"
    c.profile = "quick"  # quick: small grids, few epochs (says so in the report); full: the real study
    c.force = False  # redo experiments that are already complete
    c.only = ""  # comma-separated experiment names; empty = all
    # same_code: keep a complete stage only if the code that made it is the code running now
    # (its provenance.code_id); any: keep complete stages whatever code made them (REPORT.md says so)
    c.reuse = "same_code"
    # stages run at once, each in its own process (1: one after the other, in this process); their
    # numbers are the same, their timings are not (they share the machine)
    c.jobs = 1
    return c
