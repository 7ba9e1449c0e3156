"""Typed training configs: dataclasses validated at construction, readable from
YAML, TOML or JSON files, with dotted overrides on top (what the CLI flags set).

A config is a tree of sections (``model``, ``data``, ``optim``, ``train``,
``engine``); every error names the field by its dotted path, e.g.
``train.steps must be >= 1, got -5``. The sections shared by the three
training kinds (optimizer, run, engine) are defined once here; the task
configs (:class:`PretrainConfig`, :class:`LCATConfig`, :class:`LITConfig`)
differ only in their ``model`` and ``data`` sections.

Checks that need more than one section or the outside world (the model's
window against ``data.seq_len``, a data file that does not exist, the batch
against the number of processes) run in each task's ``check`` before any
training starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from .._checks import check_int
from ..config_io import ConfigError, apply_overrides, build as _build, read_config_file
from ..modeling.layout import DEFAULT_LAYOUT, LayerSettingError, check_layer_settings, settings_of

PACKING_MODES = ("split", "packed", "concat")  # see zebra_llm.data.packing
DECAYS = ("cosine", "linear", "constant")  # see zebra_llm.train.schedule
STRATEGIES = ("auto", "single", "ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16")
OVERFLOW = ("drop", "truncate", "error")
NONFINITE = ("stop", "skip")  # what a step whose loss or gradient is inf/nan does (engine.py)


def _error(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path} {message}")


def _fail(path: str, message: str) -> None:
    raise _error(path, message)


def _check_int(section: str, name: str, value, *, minimum: int) -> None:
    check_int(f"{section}.{name}", value, minimum, error=_error)  # the package's one integer check


def _check_finite(section: str, obj, *names: str) -> None:
    """inf and nan pass every comparison check the wrong way (``not inf > 0`` is False,
    ``nan < 0`` is False), so every float field is checked for finiteness first."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            _fail(f"{section}.{name}", f"must be a number, got {value!r}")
        if value is not None and not math.isfinite(value):
            _fail(f"{section}.{name}", f"must be a finite number, got {value}")


def _check_choice(section: str, name: str, value, choices) -> None:
    if value not in choices:
        _fail(f"{section}.{name}", f"must be one of {', '.join(map(str, choices))}; got {value!r}")


# --------------------------------------------------------------------------- shared sections


@dataclass
class OptimOptions:
    """AdamW with linear warmup and a decay to ``min_lr_ratio * lr`` (schedule.py)."""

    _section: ClassVar[str] = "optim"
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    decay: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    def __post_init__(self):
        s = self._section
        _check_finite(s, self, "lr", "min_lr_ratio", "weight_decay", "beta1", "beta2", "eps", "grad_clip")
        if not self.lr > 0:
            _fail(f"{s}.lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            _fail(f"{s}.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _check_int(s, "warmup_steps", self.warmup_steps, minimum=0)
        _check_choice(s, "decay", self.decay, DECAYS)
        if self.weight_decay < 0:
            _fail(f"{s}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                _fail(f"{s}.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            _fail(f"{s}.eps", f"must be > 0, got {self.eps}")
        if self.grad_clip < 0:
            _fail(f"{s}.grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip}")


@dataclass
class RunOptions:
    """How long, how big a batch, where results go, when to checkpoint."""

    _section: ClassVar[str] = "train"
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # global batch, in sequences (LIT: examples), over all processes
    micro_batch_size: int | None = None  # per process and forward; None = batch_size / processes
    seed: int = 0
    output_dir: str = "runs/zebra"
    save_every: int = 0  # resumable checkpoint every N steps (and at the end); 0 = only on SIGTERM
    keep_checkpoints: int = 2  # newest N resumable checkpoints kept
    resume: bool | str = False  # True = newest checkpoint in output_dir (fresh start if none); or a path
    log_every: int = 1  # metrics.jsonl / TensorBoard record every N steps
    progress: bool = True  # progress bar on the main process
    nonfinite: str = "stop"  # a step with an inf/nan loss or gradient: stop the run, or skip the update (counted)

    def __post_init__(self):
        s = self._section
        _check_int(s, "steps", self.steps, minimum=1)
        _check_choice(s, "nonfinite", self.nonfinite, NONFINITE)
        _check_int(s, "batch_size", self.batch_size, minimum=1)
        if self.micro_batch_size is not None:
            _check_int(s, "micro_batch_size", self.micro_batch_size, minimum=1)
        _check_int(s, "save_every", self.save_every, minimum=0)
        _check_int(s, "keep_checkpoints", self.keep_checkpoints, minimum=1)
        _check_int(s, "log_every", self.log_every, minimum=1)
        if not str(self.output_dir).strip():
            _fail(f"{s}.output_dir", "must not be empty")


@dataclass
class EngineOptions:
    """Where and how the model runs: device, parallelism and the options applied
    to the model from outside (activation checkpointing, torch.compile, autocast)."""

    _section: ClassVar[str] = "engine"
    device: str = "auto"  # auto (cuda if available), cpu, cuda
    strategy: str = "auto"  # auto: ddp with several processes, else single; fsdp = FSDP2 sharding
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each decoder block
    compile_backend: str = "inductor"
    context_parallel: int = 1  # processes sharing each sequence (contiguous slices); world = data x context parallel

    def __post_init__(self):
        s = self._section
        _check_int(s, "context_parallel", self.context_parallel, minimum=1)
        if self.context_parallel > 1 and self.compile:
            _fail(f"{s}.compile", "is not supported with engine.context_parallel > 1 (the attention exchanges keys "
                  "between processes inside each layer); turn one of them off")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            _fail(f"{s}.device", f"must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        _check_choice(s, "strategy", self.strategy, STRATEGIES)
        _check_choice(s, "precision", self.precision, PRECISIONS)


@dataclass
class CurriculumStage:
    """``steps`` optimizer steps at ``seq_len`` before the next stage."""

    steps: int
    seq_len: int


@dataclass
class DataOptions:
    """Pretraining / LCAT text: documents tokenized once (cached) and packed
    into fixed-length sequences (zebra_llm.data.packing)."""

    _section: ClassVar[str] = "data"
    source: str | None = None  # None = the default stdlib corpus; a file, directory or datasets name
    field: str = "text"
    split: str = "train"
    limit: int | None = None  # first N documents
    seq_len: int = 2048
    packing: str = "split"
    curriculum: list[CurriculumStage] = dataclasses.field(default_factory=list)  # shorter stages first
    encoding: str = "utf-8"  # of local text files (decoded strictly; a bad byte is an error naming its offset)

    def __post_init__(self):
        s = self._section
        _check_int(s, "seq_len", self.seq_len, minimum=2)
        _check_encoding(s, self.encoding)
        if self.limit is not None:
            _check_int(s, "limit", self.limit, minimum=1)
        _check_choice(s, "packing", self.packing, PACKING_MODES)
        self.curriculum = [
            st if isinstance(st, CurriculumStage) else _build(CurriculumStage, st, f"{s}.curriculum[{i}]")
            for i, st in enumerate(self.curriculum)
        ]
        for i, st in enumerate(self.curriculum):
            _check_int(f"{s}.curriculum[{i}]", "steps", st.steps, minimum=1)
            if not 2 <= st.seq_len <= self.seq_len:
                _fail(f"{s}.curriculum[{i}].seq_len", f"must be in [2, data.seq_len={self.seq_len}], got {st.seq_len}")

    def stage_lengths(self, steps: int) -> list[tuple[int, int]]:
        """``[(first_step, seq_len), ...]``: the curriculum stages, then ``seq_len``."""
        from ..data.packing import curriculum_stages

        return curriculum_stages([(st.steps, st.seq_len) for st in self.curriculum], self.seq_len, steps)


@dataclass
class InstructionDataOptions:
    """LIT records: a JSONL file of ``messages`` or ``prompt``/``response``
    records (zebra_llm.data.instructions)."""

    _section: ClassVar[str] = "data"
    path: str | None = None  # required
    seq_len: int = 4096  # longest example, in tokens
    chat_template: str = "auto"  # auto: the tokenizer's template when it has one; none: plain format
    overflow: str = "drop"  # examples longer than seq_len: drop, truncate (keep the start) or error
    limit: int | None = None
    encoding: str = "utf-8"  # of the JSONL file

    def __post_init__(self):
        s = self._section
        _check_int(s, "seq_len", self.seq_len, minimum=2)
        _check_encoding(s, self.encoding)
        _check_choice(s, "chat_template", self.chat_template, ("auto", "none"))
        _check_choice(s, "overflow", self.overflow, OVERFLOW)
        if self.limit is not None:
            _check_int(s, "limit", self.limit, minimum=1)


def _check_encoding(section: str, encoding: str) -> None:
    import codecs

    try:
        codecs.lookup(str(encoding))
    except LookupError:
        _fail(f"{section}.encoding", f"must be a text encoding Python knows (utf-8, latin-1, cp1252, ...); got {encoding!r}")


# --------------------------------------------------------------------------- model sections


def _check_layout(s: str, options) -> None:
    """ZebraLayout's check of the section's layer settings (None: not given), so a bad one fails before any
    model is built, named by its dotted path."""
    try:
        check_layer_settings(**settings_of(options))
    except LayerSettingError as e:
        _fail(f"{s}.{e.field}", e.problem)


@dataclass
class PretrainModelOptions:
    """The model trained from scratch: a Zebra preset, or any transformers
    causal-LM config file; the Zebra fields override the preset's."""

    _section: ClassVar[str] = "model"
    preset: str | None = "debug"  # ZebraConfig.from_preset name
    config: str | None = None  # a config.json / model directory / YAML of any causal LM; replaces preset
    attention: str | None = None  # the layer settings (ZebraLayout's); None: the preset's
    layer_group_size: int | None = None
    window: int | None = None
    approx_chunk_size: int | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # any other config field
    tokenizer: str = "smollm2"  # a model spec as in zebra_llm.loading, or a tokenizer directory
    attn_implementation: str | None = None

    def __post_init__(self):
        s = self._section
        if self.preset is None and self.config is None:
            _fail(f"{s}.preset", "or model.config must be given")
        _check_layout(s, self)


@dataclass
class LCATModelOptions:
    """Long Context Adaptation Training: a Llama-family checkpoint converted
    with ``convert_to_zebra`` and optionally a new RoPE base or scaling."""

    _section: ClassVar[str] = "model"
    source: str = "smollm2"  # --from: a model spec (zebra_llm.loading)
    attention: str = DEFAULT_LAYOUT.attention  # the layer settings, with ZebraLayout's defaults
    layer_group_size: int = DEFAULT_LAYOUT.layer_group_size
    window: int = DEFAULT_LAYOUT.window
    approx_chunk_size: int | None = DEFAULT_LAYOUT.approx_chunk_size
    rope_theta: float | None = None  # new RoPE base (e.g. 500000)
    rope_scaling: dict[str, Any] | None = None  # transformers rope_parameters, e.g. {rope_type: yarn, factor: 4}
    max_position_embeddings: int | None = None  # default: max(source's, data.seq_len)

    def __post_init__(self):
        s = self._section
        if not str(self.source).strip():
            _fail(f"{s}.source", "must name a model (a directory, a .gguf file, a hub name or 'smollm2')")
        _check_layout(s, self)
        _check_finite(s, self, "rope_theta")
        if self.rope_scaling is not None:
            for key, value in self.rope_scaling.items():
                if isinstance(value, float) and not math.isfinite(value):
                    _fail(f"{s}.rope_scaling.{key}", f"must be a finite number, got {value}")
        if self.rope_theta is not None and not self.rope_theta > 0:
            _fail(f"{s}.rope_theta", f"must be > 0, got {self.rope_theta}")
        if self.rope_scaling is not None and "rope_type" not in self.rope_scaling:
            _fail(f"{s}.rope_scaling", "needs a rope_type (linear, dynamic, yarn, longrope, llama3)")
        if self.max_position_embeddings is not None:
            _check_int(s, "max_position_embeddings", self.max_position_embeddings, minimum=1)


@dataclass
class LoraOptions:
    _section: ClassVar[str] = "model.lora"
    enabled: bool = False
    r: int = 16
    alpha: float = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    merge: bool = True  # the final model is the base with the adapter merged in (and the adapter alone)

    def __post_init__(self):
        s = self._section
        _check_int(s, "r", self.r, minimum=1)
        _check_finite(s, self, "alpha", "dropout")
        if not 0 <= self.dropout < 1:
            _fail(f"{s}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class LITModelOptions:
    """Long Instruction Tuning of any causal LM (a Zebra checkpoint after LCAT,
    or any transformers model), optionally through a LoRA adapter (peft)."""

    _section: ClassVar[str] = "model"
    source: str = "smollm2"  # --from
    lora: LoraOptions = dataclasses.field(default_factory=LoraOptions)
    attn_implementation: str | None = None

    def __post_init__(self):
        if not str(self.source).strip():
            _fail(f"{self._section}.source", "must name a model (a directory, a .gguf file, a hub name or 'smollm2')")
        if not isinstance(self.lora, LoraOptions):
            self.lora = _build(LoraOptions, self.lora, "model.lora")


# --------------------------------------------------------------------------- task configs


@dataclass
class _TaskConfig:
    optim: OptimOptions = dataclasses.field(default_factory=OptimOptions)
    train: RunOptions = dataclasses.field(default_factory=RunOptions)
    engine: EngineOptions = dataclasses.field(default_factory=EngineOptions)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            cls = typing.get_type_hints(type(self))[f.name]
            if isinstance(value, dict):
                setattr(self, f.name, _build(cls, value, f.name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict[str, Any] | list[str] | None = None):
        """Read a YAML/TOML/JSON file (optional) and apply dotted overrides
        (``{"train.steps": 10}`` or ``["train.steps=10"]``) on top."""
        data = read_config_file(path) if path is not None else {}
        return cls.from_dict(apply_overrides(data, overrides or {}))

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _build(cls, data, "")


@dataclass
class PretrainConfig(_TaskConfig):
    model: PretrainModelOptions = dataclasses.field(default_factory=PretrainModelOptions)
    data: DataOptions = dataclasses.field(default_factory=DataOptions)


@dataclass
class LCATConfig(_TaskConfig):
    model: LCATModelOptions = dataclasses.field(default_factory=LCATModelOptions)
    data: DataOptions = dataclasses.field(default_factory=lambda: DataOptions(seq_len=8192))


@dataclass
class LITConfig(_TaskConfig):
    model: LITModelOptions = dataclasses.field(default_factory=LITModelOptions)
    data: InstructionDataOptions = dataclasses.field(default_factory=InstructionDataOptions)


# --------------------------------------------------------------------------- what a resume may change

# A resume continues one run exactly; it may change how and where the run executes,
# and how long it goes on, but nothing that decides the numbers up to here or the
# model that comes out. Every other field must equal the checkpoint's.
RESUME_MAY_CHANGE = (
    "train.steps",  # upwards only; the learning-rate decay then ends at the new last step
    "train.output_dir",
    "train.resume",
    "train.save_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.progress",
    "train.micro_batch_size",  # gradient accumulation gives the same step up to float rounding
    "train.nonfinite",
    "engine.*",  # device, strategy, precision, activation checkpointing, compile
    "model.attn_implementation",  # the kernel, not the attention pattern
    "model.lora.merge",  # how the final model is saved
    "data.source",  # the data may move; its tokens must be the same (checked by fingerprint)
    "data.path",
)


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _section_of(data: dict, name: str):
    node = data
    for part in name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _may_change(name: str) -> bool:
    return any(name == f or (f.endswith(".*") and name.startswith(f[:-1])) for f in RESUME_MAY_CHANGE)


def check_resume(saved: dict[str, Any] | None, now: dict[str, Any], step: int) -> list[str]:
    """Compare a checkpoint's config (``saved``, from its trainer_state.json) with
    the config of the run resuming it (``now``; both ``to_dict()`` forms).

    Raises a ConfigError naming the first field that a resume may not change
    (see RESUME_MAY_CHANGE), or ``train.steps`` below the checkpoint's ``step``;
    returns the allowed changes as ``"field old -> new"`` lines. Fields that
    the checkpoint does not record (written by an older version) are not compared.
    """
    steps = now.get("train", {}).get("steps")
    if steps is not None and steps < step:
        raise ConfigError(
            f"train.steps ({steps}) is below the checkpoint's step ({step}); a resumed run continues from there, "
            f"so give train.steps >= {step} (--steps)"
        )
    if not saved:
        return []
    old, new = _flatten(saved), _flatten(now)
    names = set(old) & set(new)
    # a field that is a leaf on one side and a section on the other (None or {} vs a
    # mapping, e.g. model.rope_scaling): compared as a whole under the leaf's name
    for name in set(old) ^ set(new):
        other = new if name in old else old
        for k in other:
            if k.startswith(name + "."):
                names.add(name)
    changes = []
    for name in sorted(names):
        a = json.loads(json.dumps(old[name] if name in old else _section_of(saved, name)))
        b = json.loads(json.dumps(new[name] if name in new else _section_of(now, name)))
        if a == b:
            continue
        if not _may_change(name):
            raise ConfigError(
                f"{name} differs from the checkpoint's ({a!r} there, {b!r} now); a resume may change only "
                "train.steps (upwards), where and how often it saves and reports, the micro-batch and engine.*; "
                "start a new run (another --output-dir) to change it"
            )
        changes.append(f"{name} {a!r} -> {b!r}")
    return changes


# --------------------------------------------------------------------------- reading and coercion
