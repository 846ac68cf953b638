"""taskvec: task vectors in LLMs and VLMs, on nnsight.

The whole public API, in the order a study uses it::

    import taskvec
    m = taskvec.load("gemma-3-270m")                 # any hub id or local folder works too
    task = taskvec.get_task("country-capital")       # 12+ built-in tasks, or load_task("my.json")
    prompts = taskvec.sample_icl_prompts(task.pairs("val"), task.pairs("test")[:8], n_shots=5)
    preds = taskvec.predict(m, prompts)              # greedy first token
    taskvec.accuracy(preds, [p.label for p in prompts])
"""

from .errors import TaskvecError
from .experiments.cross_modal import Setting, transfer_experiment, wide_table
from .inputs.metric import accuracy, is_correct, majority
from .inputs.prompts import (GENERIC, IMAGE, Prompt, Template, chat_template, icl_prompt, instruction_prompt,
                             sample_icl_prompts, zero_shot)
from .interventions.base import Intervention
from .interventions.heads import HeadIntervention
from .interventions.mimic import MimIC
from .interventions.residual import ResidualPatch
from .interventions.run import first_token_logits, generate, predict, run
from .methods.deltas import Deltas, activation_deltas, delta_heatmap
from .methods.fit import Fit, HeadFit
from .methods.lens import LensResult, PhaseResult, decode, lens, residuals_at
from .methods.mimic import fit_mimic
from .methods.mtv import fit_mtv, mtv_means
from .methods.patching import best_layer, layer_sweep, patch_generate, patch_predict
from .methods.stv import fit_stv
from .methods.tsne import TSNEResult, tsne
from .methods.vectors import TaskVector, ensemble, extract_icl, extract_instruction
from .models.architectures import ARCHITECTURES, Architecture
from .models.loading import DEFAULT_MODEL, EMBEDDED, list_models, load
from .models.each_batch import BatchSizeWarning
from .models.model import Batch, Model
from .sites.collect import Activations, collect, head_activations, read_residuals
from .sites.heads import read_heads, write_heads
from .tasks import PAPER_TASKS, TEXT_TASKS, Task, get_task, list_tasks, load_task

__version__ = "0.1.0"

__all__ = [
    "accuracy",
    "Architecture",
    "ARCHITECTURES",
    "Batch",
    "BatchSizeWarning",
    "best_layer",
    "chat_template",
    "decode",
    "DEFAULT_MODEL",
    "EMBEDDED",
    "ensemble",
    "extract_icl",
    "extract_instruction",
    "first_token_logits",
    "GENERIC",
    "icl_prompt",
    "IMAGE",
    "instruction_prompt",
    "is_correct",
    "layer_sweep",
    "lens",
    "LensResult",
    "get_task",
    "list_models",
    "list_tasks",
    "load",
    "load_task",
    "PAPER_TASKS",
    "Task",
    "TEXT_TASKS",
    "majority",
    "Model",
    "patch_generate",
    "patch_predict",
    "PhaseResult",
    "predict",
    "Prompt",
    "read_residuals",
    "residuals_at",
    "sample_icl_prompts",
    "Setting",
    "TaskvecError",
    "TaskVector",
    "Template",
    "transfer_experiment",
    "tsne",
    "TSNEResult",
    "wide_table",
    "zero_shot",
    # many-shot / learned task vectors (MTV, STV, MimIC) and head-level access
    "activation_deltas",
    "Deltas",
    "delta_heatmap",
    "fit_mimic",
    "fit_mtv",
    "fit_stv",
    "head_activations",
    "HeadFit",
    "HeadIntervention",
    "MimIC",
    "mtv_means",
    "read_heads",
    "write_heads",
    # the layers underneath: sites (collect), interventions (one protocol, one runner), fits
    "Activations",
    "collect",
    "Fit",
    "generate",
    "Intervention",
    "ResidualPatch",
    "run",
]
