"""Why a local folder is not a model: the errors ``taskvec.load`` gives for a folder that
``save_pretrained`` did not write (no config.json, an unknown model_type, weights or tokenizer missing)."""

from __future__ import annotations

import difflib
import json
import os

from ..errors import TaskvecError


def _local_error(folder: str, err: BaseException, stage: str) -> TaskvecError:
    """The error for a local folder that exists but could not be loaded as a model."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return TaskvecError(
        f"cannot load the model folder {folder!r}: its {stage} cannot be loaded: {first} ({type(err).__name__}; the folder holds "
        f"{_listing(folder)}). A model folder is what save_pretrained writes: config.json, the weights "
        "(*.safetensors) and the tokenizer files"
    )


def _listing(folder: str, limit: int = 8) -> str:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return "nothing readable"
    if not names:
        return "no files"
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_local_dir(folder: str, trust_remote_code: bool = False) -> None:
    """Refuse a local folder that is not a saved model, saying what is missing or wrong (L03, L07)."""
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise TaskvecError(
            f"cannot load model {folder!r}: it is a local directory but not a saved model: it has no config.json "
            f"(it holds {_listing(folder)}). A model folder is what save_pretrained writes (config.json, the "
            f"weights, the tokenizer); embedded models that need no folder: {', '.join(_embedded_names())}"
        )
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise TaskvecError(f"cannot load model {folder!r}: its config.json is not valid JSON ({err}): "
                           "save the model again with save_pretrained") from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not model_type:
        raise TaskvecError(f"cannot load model {folder!r}: its config.json has no model_type, so transformers "
                           "cannot tell which architecture it is: save the model again with save_pretrained")
    from transformers import __version__
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES and not (trust_remote_code and config.get("auto_map")):
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=3, cutoff=0.7)
        hint = f" (close known ones: {', '.join(close)})" if close else ""
        remote = " or pass trust_remote_code=True (the folder ships its own model code)" if config.get("auto_map") else ""
        raise TaskvecError(
            f"cannot load model {folder!r}: its config.json has model_type {model_type!r}, which transformers "
            f"{__version__} does not know{hint}: check the spelling, upgrade transformers{remote}"
        )


#: How long the hub probe waits for a connection before calling the machine offline.


def _embedded_names() -> list[str]:
    from .loading import EMBEDDED  # the registry lives with load(); read lazily, never at import

    return list(EMBEDDED)
