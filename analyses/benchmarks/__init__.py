"""Benchmarks of taskvec against plain transformers forwards; each runs from the repository root as
``python -m analyses.benchmarks.<name>`` (or ``taskvec reproduce <name>``). Shared code:
``_measure`` (peak memory) and ``analyses._common`` (writing results)."""
