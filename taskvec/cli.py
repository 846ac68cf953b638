"""The ``taskvec`` command line: ``taskvec --help`` lists the subcommands."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .outputs import OutputRescued, _taken, save_outputs, writable_dir, writable_file

EPILOG = """examples:
  taskvec demo                                  # the main demo on the embedded models
  taskvec models                                # embedded models and supported architectures
  taskvec lens "Q:France\\nA:Paris\\n\\nQ:Japan\\nA:" --top-k 3
  taskvec extract --task country-capital --out vectors/cc      # a text-ICL task vector
  taskvec patch vectors/cc --task country-capital              # layer search + test accuracy
  taskvec reproduce table3 --quick                             # run an analyses/ script
"""


#: escapes a prompt typed on the command line may hold, and the characters they stand for
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
_ESCAPE = re.compile(r"\\([nt\\])")

#: options that are counts (whole numbers >= 1), by their argparse ``dest``
_COUNTS = {"n": "-n", "shots": "--shots", "top_k": "--top-k", "batch_size": "--batch-size", "n_val": "--n-val",
           "n_test": "--n-test"}


def prompt_text(arg: str) -> str:
    r"""A prompt typed on the command line, as the text the model sees.

    Only three escapes are turned into characters: ``\n`` (a newline), ``\t`` (a tab) and ``\\``
    (one backslash). Everything else is kept as typed: non-ASCII text, and any other backslash
    (``C:\Users``).

    Example:
        >>> prompt_text(r"Q:café\nA:")
        'Q:café\nA:'
        >>> prompt_text(r"Q:C:\Users\nA:")
        'Q:C:\\Users\nA:'
        >>> prompt_text(r"a\\nb")         # an escaped backslash, then the letter n
        'a\\nb'
    """
    return _ESCAPE.sub(lambda m: _ESCAPES[m.group(1)], arg)


def _check_counts(args: argparse.Namespace) -> None:
    """Refuse a count below 1 (``-n 0`` would mean 'all items' further down), before any work."""
    from .checks import count

    for dest, option in _COUNTS.items():
        value = getattr(args, dest, None)
        if value is not None:
            count(option, value)


def _loaded(what: str, path: str, load: Callable[[], Any]) -> Any:
    """``load()``, with anything it raises for a bad file (corrupt, truncated, a key missing) shown
    as a TaskvecError naming ``what`` and ``path``."""
    from .errors import TaskvecError

    try:
        return load()
    except TaskvecError:
        raise
    except Exception as err:  # noqa: BLE001 - a bad input file must not end in a traceback
        raise TaskvecError(f"cannot load the {what} {path!r}: {type(err).__name__}: {err}") from err


def _cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo

    out = writable_file(args.out, "--out")
    try:
        run_demo(args.model, args.task, vlm_name=args.vlm or None, n_queries=args.n, n_shots=args.shots,
                 seed=args.seed, out=out)
    except OSError as err:
        report = getattr(err, "report_html", None)
        if report is None:
            raise
        save_outputs([(out, lambda path: path.write_text(report, encoding="utf-8"))])
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.architectures import ARCHITECTURES
    from .models.loading import list_models

    print("embedded models (no download needed):")
    for m in list_models():
        print(f"  {m['name']:<20} {m['description']}")
    print("\nsupported architectures (config.model_type), for any hub id or local folder:")
    print("  text: " + ", ".join(k for k, a in ARCHITECTURES.items() if not a.is_vlm))
    print("  vision-language: " + ", ".join(k for k, a in ARCHITECTURES.items() if a.is_vlm))
    return 0


def _cmd_lens(args: argparse.Namespace) -> int:
    from .methods.lens import lens
    from .models.loading import load

    out = writable_file(args.out, "--out") if args.out else None
    prompts = [prompt_text(p) for p in args.prompts]
    model = load(args.model)
    result = lens(model, prompts, top_k=args.top_k, position=args.position)
    table = result.df.assign(token=result.df.token.map(repr))
    wide = table.pivot_table(index=["prompt", "layer"], columns="rank", values="token", aggfunc="first")
    print(wide.to_string())
    if out is not None:
        save_outputs([(out, lambda path: result.df.to_csv(path, index=False))])
        print(f"wrote {out}")
    return 0


def _task(name: str):  # noqa: ANN202
    from .tasks import get_task, load_task

    if name.endswith((".json", ".csv")):
        return _loaded("task file", name, lambda: load_task(name))
    return get_task(name)


def _cmd_extract(args: argparse.Namespace) -> int:
    from .errors import TaskvecError
    from .experiments.cross_modal import pairs
    from .interventions.files import check_target, paths, stem
    from .methods.vectors import FORMAT, extract_icl, extract_instruction
    from .models.loading import load

    if not args.out.strip():
        raise TaskvecError("--out is empty: pass a path stem (it writes STEM.safetensors and STEM.json)")
    out = stem(Path(args.out).expanduser())
    st, js = paths(out)
    writable_file(st, "--out", also=[js], asked=args.out)
    check_target(out, f"{FORMAT}/1", "task vector")  # never replaces another kind of artefact
    task = _task(args.task)
    items = None if args.spec == "instruction" else pairs(task, args.split, args.spec, args.n)
    model = load(args.model)
    if items is None:
        vec = extract_instruction(model, task.instruction, task=task.name)
    else:
        vec = extract_icl(model, items, task=task.name, n_shots=args.shots, seeds=tuple(args.seeds),
                          batch_size=args.batch_size)
    print(vec)
    save_outputs([(out, vec.save)], taken=lambda path: any(_taken(f) for f in paths(path)))
    print(f"wrote {st} and {js}")
    return 0


def _cmd_patch(args: argparse.Namespace) -> int:
    from .experiments.cross_modal import pairs, zero_shot
    from .interventions.run import predict
    from .models.loading import load
    from .inputs.metric import accuracy
    from .methods.patching import best_layer, layer_sweep, patch_predict
    from .methods.vectors import TaskVector

    out = writable_dir(args.out_dir, "--out-dir") if args.out_dir else None
    vec = _loaded("task vector", args.vector, lambda: TaskVector.load(args.vector))
    task = _task(args.task or vec.task)
    val = zero_shot(pairs(task, "val", args.query, args.n_val))
    test = zero_shot(pairs(task, "test", args.query, args.n_test))
    model = load(args.model or vec.model_name)
    transfer = model.name != vec.model_name  # --model names another model: LLM->VLM transfer is what was asked
    if args.layer is None:
        sweep = layer_sweep(model, vec, val, allow_transfer=transfer, batch_size=args.batch_size)
        by_layer = sweep.groupby("layer").correct.mean()
        print("validation accuracy per layer:\n" + by_layer.to_string(float_format=lambda v: f"{v:.2f}"))
        layer = best_layer(sweep)
    else:
        sweep, layer = None, model.check_layer(args.layer)
    labels = [q.label for q in test]
    patched = patch_predict(model, vec, test, layer, allow_transfer=transfer, batch_size=args.batch_size)
    alone = predict(model, test, batch_size=args.batch_size)
    print(f"\n{task.name}: {len(test)} {args.query} test queries, vector {vec.spec} from {vec.model_name}, layer {layer}")
    print(f"  no context  {accuracy(alone, labels):.2f}\n  patched     {accuracy(patched, labels):.2f}")
    if out is not None:
        import pandas as pd

        table = pd.DataFrame({"query": [str(q.text) for q in test], "label": labels, "no_context": alone,
                              "patched": patched})
        outputs = [(out / "predictions.csv", lambda path: table.to_csv(path, index=False))]
        if sweep is not None:
            outputs.append((out / "validation_sweep.csv", lambda path: sweep.to_csv(path, index=False)))
        save_outputs(outputs)
        print(f"wrote {out}/predictions.csv" + (" and validation_sweep.csv" if sweep is not None else ""))
    return 0


def analyses_dir() -> Path:
    """The ``analyses/`` folder of a source checkout (``taskvec reproduce`` runs its scripts)."""
    from .errors import TaskvecError

    folder = Path(__file__).resolve().parents[1] / "analyses"
    if not folder.is_dir():
        raise TaskvecError("taskvec reproduce runs the scripts of a source checkout's analyses/ folder, which this "
                           "installation lacks: git clone the repository and pip install -e . there")
    return folder


def reproducible() -> dict[str, Path]:
    """Short name (``table3``, ``fig11``, ``bench_lens``...) -> analyses script (``taskvec reproduce``
    runs it as the module ``analyses.<name>``, ``analyses.benchmarks.<name>``)."""
    folder = analyses_dir()
    scripts = sorted(folder.glob("*.py")) + sorted((folder / "benchmarks").glob("bench_*.py"))
    out = {}
    for path in scripts:
        if path.name.startswith("_"):
            continue
        first = path.stem.split("_")[0]
        # the paper's numbered tables and figures go by their number (table3, fig11, figA)
        short = first if re.fullmatch(r"(table|fig)[0-9A-Z]+", first) else path.stem
        out.setdefault(short, path)
        out[path.stem] = path
    return out


def _cmd_reproduce(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import os

    from .errors import TaskvecError

    scripts = reproducible()
    if args.target in (None, "list"):
        first: dict[Path, str] = {}
        for short, path in scripts.items():
            first.setdefault(path, short)
        print("runnable analyses (taskvec reproduce NAME [script options], e.g. --quick):")
        for path, short in sorted(first.items(), key=lambda kv: kv[1]):
            print(f"  {short:<22} analyses/{path.relative_to(analyses_dir()).as_posix()}")
        return 0
    if args.target not in scripts:
        raise TaskvecError(f"unknown analysis {args.target!r}: run 'taskvec reproduce list' to see the names")
    env = dict(os.environ)
    if args.out_dir:
        env["TASKVEC_RESULTS"] = str(writable_dir(args.out_dir, "--out-dir").resolve())  # checked before the run
    # the scripts are modules of the analyses package: the checkout's root goes on the path (the
    # working directory stays, so relative paths in the script's options mean what they say)
    root = analyses_dir().parent
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    module = ".".join(scripts[args.target].relative_to(root).with_suffix("").parts)
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # an analyses/ in the cwd must not shadow it
    cmd = [sys.executable, *safe_path, "-m", module, *extra]
    print("running " + " ".join(cmd), flush=True)
    return run_child(cmd, env=env)


#: Seconds a child gets to stop after a forwarded signal before it is killed.
STOP_GRACE_S = 20.0


def run_child(cmd: Sequence[str], *, env: dict | None = None, grace: float | None = None) -> int:
    """Run ``cmd`` in its own process group and return its exit status (``128 + N`` when signal N
    ended it, as a shell reports it).

    SIGINT, SIGTERM and SIGHUP sent to this process are forwarded to the child's whole group and
    this process waits for it, so stopping ``taskvec reproduce`` (Ctrl-C, ``kill``, ``timeout``, a
    scheduler) stops the analysis too instead of leaving it running as an orphan. A child still
    running ``grace`` seconds (default :data:`STOP_GRACE_S`) after the first signal, or at a second
    signal, is killed (SIGKILL).
    """
    import os
    import signal
    import subprocess
    import time

    grace = STOP_GRACE_S if grace is None else grace
    if os.name != "posix":  # no process groups to signal: the child shares the console's Ctrl-C
        return subprocess.call(list(cmd), env=env)
    # its own process group (same session, so it still writes to the terminal); Python 3.10: setsid
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
    proc = subprocess.Popen(list(cmd), env=env, **group)
    got: list[float] = []

    def kill_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def forward(signum: int, frame: object) -> None:
        got.append(time.monotonic())
        kill_group(signum if len(got) == 1 else signal.SIGKILL)

    names = ("SIGINT", "SIGTERM", "SIGHUP")
    previous = {sig: signal.signal(sig, forward) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))}
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if got and time.monotonic() - got[0] > grace:
                    print(f"taskvec: the analysis did not stop within {grace:.0f} s of the signal: killing it",
                          file=sys.stderr, flush=True)
                    kill_group(signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # leaving on an exception: never leave the child behind
            kill_group(signal.SIGKILL)
            proc.wait()
    if rc < 0:
        print(f"taskvec: the analysis was stopped by {signal.Signals(-rc).name}; its completed units are "
              "kept and a rerun resumes from them", file=sys.stderr, flush=True)
        return 128 - rc
    return rc


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``taskvec`` command."""
    from .embedded.spec import BASE_LLM as DEFAULT_MODEL  # light: no torch at --help
    from .embedded.spec import VLM_NAME as DEFAULT_VLM

    parser = argparse.ArgumentParser(
        prog="taskvec", description="Task vectors in LLMs and VLMs.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="the main demo: ICL, the three lens phases, text->image xPatch vs xBase, "
                                    "LLM->VLM cosine, as an HTML report",
                       epilog="examples:\n  taskvec demo\n  taskvec demo --task food-color -n 60 --out demo.html\n"
                              "  taskvec demo --vlm ''      # the LLM part only",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="the LLM: embedded name, hub id or local folder")
    p.add_argument("--vlm", default=DEFAULT_VLM, help="the VLM built on that LLM ('' to skip the VLM parts)")
    p.add_argument("--task", default="country-capital", help="built-in task name (one of the paper's six)")
    p.add_argument("--out", default="taskvec-demo.html", help="HTML report path (default taskvec-demo.html)")
    p.add_argument("-n", type=int, default=40, help="test queries (default 40)")
    p.add_argument("--shots", type=int, default=5, help="demonstrations per prompt (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="list embedded models and supported architectures")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("lens", help="logit lens of prompts: top-k tokens per layer",
                       epilog='example: taskvec lens "Q:France\\nA:Paris\\n\\nQ:Japan\\nA:" --out lens.csv',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", nargs="+", help="prompt texts: \\n, \\t and \\\\ are a newline, a tab and a "
                                              "backslash; anything else is kept as typed")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--position", type=int, default=-1, help="token position (default -1, the last)")
    p.add_argument("--out", help="write the tidy table as CSV here (checked before the model loads)")
    p.set_defaults(func=_cmd_lens)

    p = sub.add_parser("extract", help="extract a task vector (text ICL, image ICL or instruction) and save it",
                       epilog="examples:\n  taskvec extract --task country-capital --out vectors/cc\n"
                              "  taskvec extract --model gemma-3-270m-vlm --spec image --task food-color --out vectors/fc",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, hub id or local folder")
    p.add_argument("--task", required=True, help="built-in task name, or a .json/.csv task file")
    p.add_argument("--spec", choices=["text", "image", "instruction"], default="text",
                   help="how the task is specified (default text ICL)")
    p.add_argument("--split", default="val", help="split the examples come from (default val)")
    p.add_argument("-n", type=int, default=None, help="use at most n items of the split (n >= 1; default all)")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="ICL seeds averaged (default 0 1 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="path stem: writes STEM.safetensors and STEM.json")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("patch", help="patch a saved task vector into zero-shot queries: layer search + test accuracy",
                       epilog="examples:\n  taskvec patch vectors/cc --task country-capital\n"
                              "  taskvec patch vectors/cc --model gemma-3-270m-vlm --query image --out-dir out/  # LLM->VLM",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("vector", help="path stem of a vector written by 'taskvec extract'")
    p.add_argument("--model", default=None, help="model to patch into (default: the vector's own model)")
    p.add_argument("--task", default=None, help="task whose queries are used (default: the vector's task)")
    p.add_argument("--query", choices=["text", "image"], default="text", help="query modality (default text)")
    p.add_argument("--layer", type=int, default=None, help="patch at this layer (default: best validation layer)")
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out-dir", default=None, help="write predictions.csv (and the validation sweep) here")
    p.set_defaults(func=_cmd_patch)

    p = sub.add_parser("reproduce", help="run a paper table / figure / benchmark script of analyses/",
                       epilog="examples:\n  taskvec reproduce list\n  taskvec reproduce table3 --quick\n"
                              "  taskvec reproduce fig3 --out-dir my-results --quick",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", default="list", help="short name (table3, fig11, bench_lens...) or 'list'")
    p.add_argument("--out-dir", default=None, help="write results here instead of analyses/results/")
    p.set_defaults(func=_cmd_reproduce, passthrough=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskvec`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if extra and not getattr(args, "passthrough", False):
        parser.error("unrecognized arguments: " + " ".join(extra))
    from .errors import TaskvecError

    try:
        _check_counts(args)
        return args.func(args, extra) if getattr(args, "passthrough", False) else args.func(args)
    except TaskvecError as err:
        print(f"taskvec: error: {err}", file=sys.stderr)
        return 2
    except OutputRescued as err:  # the work is done and saved, not where asked
        print(f"taskvec: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
