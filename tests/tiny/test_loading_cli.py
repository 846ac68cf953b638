"""The command line's listings, through ``python -m taskvec.cli`` in a subprocess: no model, but each
call imports the whole stack (seconds), too slow for the unit tier."""

import subprocess
import sys


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "taskvec.cli", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("demo", "models", "lens", "extract", "patch", "reproduce"):
        assert cmd in out.stdout
    out = subprocess.run([sys.executable, "-m", "taskvec.cli", "models"], capture_output=True, text=True, check=True)
    assert "gemma-3-270m" in out.stdout and "idefics2" in out.stdout


def test_cli_reproduce_lists_and_rejects_unknown():
    out = subprocess.run([sys.executable, "-m", "taskvec.cli", "reproduce", "list"], capture_output=True, text=True,
                         check=True)
    assert "table3" in out.stdout and "analyses/table3_cross_modal.py" in out.stdout and "bench_lens" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "taskvec.cli", "reproduce", "tableX"], capture_output=True, text=True)
    assert bad.returncode == 2 and "taskvec reproduce list" in bad.stderr
