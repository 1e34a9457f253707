"""Typed configuration: model / data / train / serve sections, YAML files, `--set` overrides, validation."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mulm_jax.config_schema import out_of_bounds
from mulm_jax.errors import MulmError


class ConfigError(MulmError):
    """A configuration value that is unknown, of the wrong type, or describes an impossible model."""


def setting(
    default: Any, help: str, *, alias: Optional[str] = None, metavar: Optional[str] = None, **bounds: float
) -> Any:
    """A config field documented where it is declared: `help` is its command-line flag's and its API body field's
    text, `alias` the name they use instead of the field's, `metavar` the flag's value in --help (default: one from
    the type), `bounds` (ge, gt, le, lt) the range they accept and validation checks (see mulm_jax.config_schema)."""
    if unknown := set(bounds) - {"ge", "gt", "le", "lt"}:
        raise TypeError(f"setting() takes the bounds ge, gt, le and lt, not {', '.join(sorted(unknown))}")
    return field(default=default, metadata={"help": help, "alias": alias, "metavar": metavar, "bounds": bounds})


# The choices of DataConfig's Literal fields; the data modules that act on them take these types from here.
InvalidUtf8 = Literal["replace", "reject"]
SplitMode = Literal["none", "paragraphs", "headings"]
DedupMode = Literal["none", "exact", "near"]


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE is stretched past the context it was trained on."""

    # dynamic: NTK with the base stretched by each sequence's own length past original_max_seq_len (HF "dynamic").
    # llama3: Llama 3.1's smooth interpolation of the low frequencies between low_ and high_freq_factor.
    type: Literal["linear", "ntk", "dynamic", "yarn", "llama3", "longrope"] = "linear"
    factor: float = 1.0
    original_max_seq_len: int = 0  # 0: the model's max_seq_len
    # YaRN: rotations per context below which a frequency is interpolated, above which it is kept; truncate:
    # round the ramp's ends to whole dimensions (as the paper does).
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    # YaRN, LongRoPE: the scale of cos and sin; 0: derived from the factor (YaRN) or the stretch (LongRoPE).
    attention_factor: float = 0.0
    # llama3: wavelengths above original / low_freq_factor are interpolated, below original / high_freq_factor kept.
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # LongRoPE: one rescale factor per rotary frequency (head_dim / 2 values); the long list is used for a
    # sequence longer than original_max_seq_len, the short one otherwise (empty: all ones).
    long_factor: tuple[float, ...] = ()
    short_factor: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    architecture: Literal["decoder", "encoder_decoder"] = "decoder"
    vocab_size: int = 256
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: Optional[int] = None  # None: = num_heads (multi-head); 1: multi-query
    d_ff: Optional[int] = None  # None: 4 * d_model
    max_seq_len: int = 256
    positional: Literal["sinusoidal", "learned", "rope", "alibi", "none"] = "learned"
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    attention: Literal["full", "sliding_window", "block_sparse"] = "full"
    sliding_window: Optional[int] = None
    # How self-attention over whole passes (training, evaluation) is computed (platform.attention_implementation):
    # dense holds every head's [T, S] scores; blockwise computes them a block of queries at a time (recomputed in
    # the backward pass); cudnn is cuDNN's flash attention (a GPU); auto: cudnn where it can run, else blockwise
    # when one layer's dense scores would exceed platform.DENSE_SCORES_BYTES, else dense.
    attention_impl: Literal["auto", "dense", "blockwise", "cudnn"] = "auto"
    block_size: Optional[int] = None
    num_global_tokens: int = 0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_position: Literal["pre", "post"] = "pre"
    norm_eps: float = 1e-5
    ffn: Literal["relu", "relu2", "gelu", "swiglu"] = "gelu"  # relu2: relu(x)^2 (Primer; modded-nanogpt)
    # One-switch ablations (docs/models.md): each block's MLP sub-layer, the feed-forward `ffn` names or none
    # (attention-only blocks); the residual connections around each sub-layer (false: pre-norm x = f(norm(x)),
    # post-norm x = norm(f(x))); the attention scores' 1/sqrt(head width) scale (none: plain q . k).
    mlp: Literal["ffn", "none"] = "ffn"
    residual: bool = True
    attention_scale: Literal["sqrt", "none"] = "sqrt"
    qk_norm: bool = False  # RMSNorm (a learnt scale per head dimension) on each head's queries and keys
    logit_softcap: Optional[float] = None  # logits = c * tanh(logits / c) (Gemma 2; modded-nanogpt); None: none
    zero_init_outputs: bool = False  # attention and feed-forward output projections (and an untied head) start at 0
    dropout: float = 0.0
    tie_embeddings: bool = True
    scale_embeddings: bool = False  # multiply token vectors by sqrt(d_model), as the 2017 Transformer does
    use_bias: bool = True
    qkv_bias: Optional[bool] = None  # biases on the query/key/value projections; None: use_bias (Qwen2: true alone)
    dtype: Literal["float32", "bfloat16"] = "float32"
    # encoder_decoder only; None: num_layers.
    num_encoder_layers: Optional[int] = None
    num_decoder_layers: Optional[int] = None
    # Run each stack's layers as one lax.scan over one Block (params stacked [num_layers, ...] under "layers"):
    # one layer compiled, not num_layers. Training and full forward passes only; load_model gives the per-layer
    # model (layer_0 ...) that generation and inspection use (models.layers converts between the two).
    scan_layers: bool = False

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def encoder_layers(self) -> int:
        return self.num_encoder_layers if self.num_encoder_layers is not None else self.num_layers

    @property
    def decoder_layers(self) -> int:
        if self.architecture == "decoder":
            return self.num_layers
        return self.num_decoder_layers if self.num_decoder_layers is not None else self.num_layers

    def validate(self) -> None:
        """Raise ConfigError for a model that cannot be built."""
        _positive(self, "vocab_size", "d_model", "num_layers", "num_heads", "max_seq_len")
        _positive(
            self,
            "num_kv_heads",
            "d_ff",
            "num_encoder_layers",
            "num_decoder_layers",
            "sliding_window",
            "block_size",
            optional=True,
        )
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads}: "
                "each head gets d_model / num_heads dimensions"
            )
        if self.num_heads % self.kv_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.kv_heads}: "
                "grouped-query attention shares each kv head among num_heads / num_kv_heads query heads"
            )
        if self.positional == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"model.positional=rope needs an even head width, but d_model / num_heads = "
                f"{self.d_model} / {self.num_heads} = {self.head_dim}"
            )
        if self.rope_scaling is not None:
            if self.positional != "rope":
                raise ConfigError(
                    f"model.rope_scaling is set but model.positional={self.positional!r}; it applies to 'rope' only"
                )
            s = self.rope_scaling
            if s.factor < 1.0:
                raise ConfigError(f"model.rope_scaling.factor={s.factor} must be >= 1.0")
            if s.type == "longrope":
                half = self.head_dim // 2
                for name in ("long_factor", "short_factor"):
                    got = getattr(s, name)
                    if name == "long_factor" and not got:
                        raise ConfigError(
                            f"model.rope_scaling.long_factor is empty; longrope needs head_dim / 2 = {half} factors"
                        )
                    if got and len(got) != half:
                        raise ConfigError(
                            f"model.rope_scaling.{name} has {len(got)} values; expected head_dim / 2 = {half}"
                        )
            if s.type == "llama3" and not 0 < s.low_freq_factor < s.high_freq_factor:
                raise ConfigError(
                    f"model.rope_scaling: low_freq_factor={s.low_freq_factor} and high_freq_factor="
                    f"{s.high_freq_factor}: expected 0 < low_freq_factor < high_freq_factor"
                )
        for name in ("mlp", "residual", "attention_scale"):  # a ModelConfig built in Python skips load's checks
            _coerce(getattr(self, name), typing.get_type_hints(ModelConfig)[name], f"model.{name}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ConfigError(f"model.logit_softcap={self.logit_softcap} must be a positive number (or null: none)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.attention == "sliding_window":
            if self.sliding_window is None:
                raise ConfigError("model.attention=sliding_window needs model.sliding_window (a window length)")
            if self.sliding_window > self.max_seq_len:
                raise ConfigError(
                    f"model.sliding_window={self.sliding_window} is larger than the context "
                    f"model.max_seq_len={self.max_seq_len}"
                )
        if self.attention == "block_sparse":
            if self.block_size is None:
                raise ConfigError("model.attention=block_sparse needs model.block_size (tokens per local block)")
            if self.block_size > self.max_seq_len:
                raise ConfigError(
                    f"model.block_size={self.block_size} is larger than the context "
                    f"model.max_seq_len={self.max_seq_len}"
                )
            if not 0 <= self.num_global_tokens <= self.max_seq_len:
                raise ConfigError(
                    f"model.num_global_tokens={self.num_global_tokens} must be in [0, max_seq_len={self.max_seq_len}]"
                )
        if self.architecture == "decoder":
            for name in ("num_encoder_layers", "num_decoder_layers"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"model.{name} is set but model.architecture='decoder'; use model.num_layers")


@dataclass(frozen=True)
class DataConfig:
    """Which data set to train on: an assembled dataset folder, or sources to assemble one from."""

    dataset: Optional[str] = setting(None, "an assembled data set version folder; when set, the keys below are ignored")
    sources: tuple[str, ...] = setting(
        (), "a named source, file (.txt, .jsonl, optionally .gz), folder or glob", alias="source"
    )
    tokenizer: str = setting("char", "char, bpe, unigram, a SentencePiece .model file or a run folder (its tokenizer)")
    vocab_size: Optional[int] = setting(None, "vocabulary size for bpe / unigram", ge=1)
    val_fraction: float = setting(0.1, "share of the text held out for validation", ge=0.0, lt=1.0)
    text_field: str = setting("text", "the JSONL field or Parquet column holding the text")
    out_dir: str = setting("datasets", "the folder assembled versions are written to", alias="out")
    seq_len: Optional[int] = setting(None, "check that each split holds a window of seq_len + 1 tokens", ge=1)
    invalid_utf8: InvalidUtf8 = setting(
        "replace", "replace bad bytes with U+FFFD, or reject: fail naming the file and offset"
    )
    fold_whitespace: bool = setting(False, "collapse runs of spaces, trim lines, keep at most one blank line in a row")
    min_doc_chars: int = setting(1, "documents shorter than this (after cleaning) are dropped", ge=1)
    max_doc_chars: Optional[int] = setting(None, "documents longer than this are dropped (unset: no limit)", ge=1)
    split_documents: Optional[SplitMode] = setting(
        None,
        "how sources' text is cut into documents: none (a file or JSONL record is one), blank-line paragraphs, "
        "or WikiText ` = Title = ` headings (unset: each named source's own scheme, wikitext2's headings, "
        "else none)",
    )
    dedup: DedupMode = setting("near", "near: exact, then MinHash near-duplicates")
    near_dup_threshold: float = setting(
        0.8, "drop a document this similar to an earlier one (Jaccard, 5-word shingles)", gt=0.0, le=1.0
    )


@dataclass(frozen=True)
class MeshConfig:
    """How the devices of a run (every process's) form the training mesh: batch rows are split over all of them,
    parameters and optimizer state are replicated over `data` and split over `fsdp`."""

    data: int = 0  # 0: every device that fsdp leaves
    fsdp: int = 1  # 1: parameters and optimizer state whole on every device
    # On the CPU, the devices train.py splits each process's CPU into (platform.training_cpu_devices). 0: one per
    # core, as many as split the batch evenly, in a single-process run (one per process in a multi-process one).
    cpu_devices: int = 0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 12  # global, across all devices and hosts
    seq_len: Optional[int] = None  # None: model.max_seq_len
    # An encoder-decoder on pairs: each row's source, padded to this many tokens (None: model.max_seq_len); the
    # target, after the decoder's start token, in seq_len.
    source_len: Optional[int] = None
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    # wsd: warm-up, then lr held until the last cooldown_frac of the steps, then a straight line to min_lr.
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    cooldown_frac: float = 0.2
    # muon: Muon (orthogonalised momentum) for the hidden layers' weight matrices at muon_lr, AdamW at lr for the
    # rest (embeddings, head, norms, biases); both follow the schedule's shape.
    optimizer: Literal["adamw", "adafactor", "lion", "sgd", "muon"] = "adamw"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: no clipping
    grad_accum_steps: int = 1
    eval_every: int = 250
    eval_batches: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 1337
    remat: bool = False
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    log_every: int = 10
    mesh: MeshConfig = MeshConfig()

    def validate(self) -> None:
        """Raise ConfigError for settings a run cannot train with (a zero lr divides the cosine schedule's floor, a
        zero interval the step count)."""
        _positive(
            self,
            "batch_size",
            "grad_accum_steps",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            section="train",
        )
        _positive(self, "seq_len", "source_len", optional=True, section="train")
        for name in ("lr", "muon_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be a positive number")
        for name in ("steps", "min_lr", "warmup_steps", "weight_decay", "grad_clip"):  # steps 0: save the start
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be zero or more")
        if not 0.0 <= self.cooldown_frac <= 1.0:
            raise ConfigError(f"train.cooldown_frac={self.cooldown_frac} must be in [0, 1]")
        _positive(self.mesh, "fsdp", section="train.mesh")
        if self.mesh.data < 0:
            raise ConfigError(f"train.mesh.data={self.mesh.data} must be zero (every device fsdp leaves) or more")
        if self.mesh.cpu_devices < 0:
            raise ConfigError(f"train.mesh.cpu_devices={self.mesh.cpu_devices} must be zero (one per core) or more")


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP API (serve.py): what it serves, where it may read and write, and its limits."""

    checkpoints: tuple[str, ...] = setting(
        (), "a run folder to serve; the model id is ID or the folder's name", alias="checkpoint", metavar="[ID=]RUN_DIR"
    )
    host: str = setting("127.0.0.1", "address to bind; 127.0.0.1: this machine only, 0.0.0.0: every interface")
    port: int = setting(
        8000, "port to bind; 0: a free port, named in the line printed at start", metavar="PORT", ge=0, le=65535
    )
    api_keys: tuple[str, ...] = setting(
        (),
        "accept this key; when any is set, every route but the probes and the web lab's files needs one",
        alias="api_key",
        metavar="KEY",
    )
    api_keys_file: Optional[str] = setting(
        None,
        "accept the keys in this file, one per line with optional name=, scopes= and quota fields (blank lines "
        "and # comments skipped; see docs/api.md)",
        metavar="PATH",
    )
    slots: int = setting(8, "sequences decoded together per model", ge=1)
    reserved_slots: int = setting(
        0,
        "slots per model that a key already generating may not take: kept for a key holding none, whose first "
        "stream then starts at once; must be less than slots",
        ge=0,
    )
    max_queue: int = setting(64, "requests waiting for a slot, per model, before 429", ge=0)
    int8: bool = setting(False, "serve with weight-only int8 kernels")
    state_dir: str = setting("state", "SQLite records of jobs and data sets, job logs", metavar="DIR")
    requests_per_minute: int = setting(
        0, "requests per API key (or per client address without keys) per minute; 0: no limit", ge=0
    )
    tokens_per_minute: int = setting(0, "generated tokens per API key per minute; 0: no limit", ge=0)
    max_streams: int = setting(
        0,
        "sequences one API key may have open at once (prompts x n of each answer still generating or being "
        "sent); 0: no limit",
        ge=0,
    )
    max_jobs: int = setting(0, "data set and training jobs one API key may have running at once; 0: no limit", ge=0)
    max_steps: int = setting(
        0, "training steps one API key's running training jobs may take together; 0: no limit", ge=0
    )
    max_body_bytes: int = setting(1_000_000, "larger request bodies are refused with 413", ge=1)
    inspect_max_tokens: int = setting(
        512, "longest prompt POST /v1/inspect traces; its answer grows with the square", ge=1
    )
    runs_root: str = setting(
        "runs", "training jobs write run folders here; POST /v1/models loads only from here", metavar="DIR"
    )
    datasets_dir: str = setting(
        "datasets", "data set jobs write versions here; training jobs read them from here", metavar="DIR"
    )
    data_roots: tuple[str, ...] = setting(
        ("data",),
        "a folder whose files data set jobs may read (named sources always)",
        alias="data_root",
        metavar="DIR",
    )
    configs_dir: str = setting("configs", "training jobs name their config as a file in here", metavar="DIR")
    extra_routes: tuple[str, ...] = setting(
        (), "a module with routes(ctx) to add to the app (see docs/api.md)", metavar="MODULE"
    )

    def validate(self) -> None:
        """Raise ConfigError for a value outside its declared range."""
        if problem := out_of_bounds(self):
            raise ConfigError(f"serve.{problem}")
        if self.reserved_slots >= self.slots:
            raise ConfigError(
                f"serve.reserved_slots={self.reserved_slots} must be less than serve.slots={self.slots}: "
                "a key holding a slot could never take another"
            )


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.serve.validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists, as YAML or JSON would hold them."""
        return _plain(dataclasses.asdict(self))


def _positive(cfg: Any, *names: str, optional: bool = False, section: str = "model") -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None and optional:
            continue
        if value <= 0:
            raise ConfigError(f"{section}.{name}={value} must be a positive integer")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, returning it converted where that is lossless."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}={value!r} is not valid: expected {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error says more
            return _coerce(value, options[0], key)
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        item_tp = typing.get_args(tp)[0]
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; allowed keys: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split `"model.num_layers=2"` into its key and its YAML-parsed value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({e})") from None
    return key, value


def config_from_dict(tree: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build and validate a Config from nested dicts plus `section.key=value` overrides."""
    if not isinstance(tree, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(tree).__name__}")
    tree = copy.deepcopy(tree)
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    config = _build(Config, tree, "")
    config.validate()
    return config


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (None: all defaults), apply overrides, type-check and validate it."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    return config_from_dict(tree, overrides)


def dump_config(config: Config) -> str:
    """The config as YAML text that load_config reads back to an equal Config."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _plain(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_plain(v) for v in tree]
    return tree


def add_config_arguments(parser: Any) -> None:
    """`--config PATH` and `--set key=value ...` on an argparse parser."""
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. model.num_layers=2",
    )


def config_from_args(args: Any) -> Config:
    return load_config(args.config, args.overrides)
