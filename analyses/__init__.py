"""Scripts that regenerate the papers' tables and figures (and, under ``benchmarks/``, the
benchmarks). Each is a module run from the repository root::

    python -m analyses.table3_cross_modal --quick
    taskvec reproduce table3 --quick          # the same, from anywhere in a source checkout

Results go to ``analyses/results/`` (or ``$TASKVEC_RESULTS``). Code that several scripts share lives
in the underscore modules (``_common``, ``benchmarks/_measure``); no script imports another.
"""
