"""Record what each --vN flag of analyses/train_embedded_vlm.py made of TrainConfig, on a checkout
of the commit that still had those flags (3b9610a); run once, kept for the record.

main() runs up to train(), which a stub replaces: it keeps the config and stops, so nothing trains.

    git worktree add /tmp/recipe-before 3b9610a
    cd /tmp/recipe-before && PYTHONPATH=/tmp/recipe-before python record_vlm_recipe_flags.py OUT_DIR

writes OUT_DIR/vN.json (vlm_recipe/recipes/: the full TrainConfig of each flag, and of no flag, v7)
and OUT_DIR/flags.json (tests/unit/data/vlm_recipe_flags_3b9610a.json: per flag set, with and
without --quick, the repr, to_json() and key() of the config main() built), which
tests/unit/test_vlm_recipes.py compares the recipe files and ``python -m vlm_recipe --recipe`` with.
"""
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

root = Path(os.environ["PYTHONPATH"].split(":")[0])
sys.path.insert(0, str(root / "analyses"))
import train_embedded_vlm as mod  # noqa: E402
from taskvec.embedded.concepts import Concept  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
TRIO = [Concept("🇫🇷", "France", "flags"), Concept("🐺", "Wolf", "animals", ("wolf",)), Concept("🍕", "Pizza", "foods")]

class Stop(Exception):
    pass

def built(argv):
    seen = {}
    def stub(concepts, config, **kw):
        seen["config"] = config
        raise Stop
    mod.train = stub
    with tempfile.TemporaryDirectory() as d:
        try:
            mod.main(argv + ["--threads", "1", "--out", f"{d}/w", "--work", f"{d}/work"])
        except Stop:
            pass
    return seen["config"]

def full(config):
    d = asdict(config)
    d["spec"] = config.spec.to_json()
    return json.loads(json.dumps(d))

fixture = {"made_by": "old_flag_configs.py on analyses/train_embedded_vlm.py at 3b9610a", "key_concepts": [c.to_json() for c in TRIO], "flags": {}}
names = ["v7"] + list(mod.EARLIER_RECIPES)
for name in names:
    for quick in (False, True):
        argv = ([] if name == "v7" else [f"--{name}"]) + (["--quick"] if quick else [])
        c = built(argv)
        fixture["flags"][" ".join(argv) or "(none)"] = {
            "recipe": name, "quick": quick, "repr": repr(c), "to_json": json.loads(json.dumps(c.to_json())),
            "key": c.key(TRIO)}
        if not quick:
            about = mod.EARLIER_RECIPES[name][0].replace("%%", "%") if name != "v7" else "the eighth shipped weights: today's (TrainConfig's defaults)"
            (out / f"{name}.json").write_text(json.dumps({"name": name, "about": about, "config": full(c)}, indent=1, ensure_ascii=False) + "\n")
(out / "flags.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
print("\n".join(f"{k}: {v['key']}" for k, v in fixture["flags"].items()))
