"""Import a Hugging Face model folder as a run folder (`from_hf`), and export a run as one (`to_hf`)."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from mulm_jax.config import Config, ConfigError, ModelConfig
from mulm_jax.infer.loading import load_model
from mulm_jax.interop import gpt2, llama, phi3
from mulm_jax.interop.mapping import InteropError
from mulm_jax.interop.tokenizer import export_tokenizer, read_hf_tokenizer
from mulm_jax.models.info import param_shapes
from mulm_jax.runs import checkpoint_manager, write_run_files

FAMILIES: dict[str, ModuleType] = {
    gpt2.ARCHITECTURE: gpt2,
    **{a: llama for a in llama.ARCHITECTURES},
    phi3.ARCHITECTURE: phi3,
}
EXPORTS = {"GPT-2": gpt2, "Llama": llama}
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
RECORD = "imported_from.json"  # in an imported run folder: the source folder and architecture


def from_hf(src: str | Path, out: str | Path, *, dtype: str = "float32", max_seq_len: Optional[int] = None) -> Path:
    """Write the Hugging Face model folder `src` as a run folder `out` (config.yaml, tokenizer, a checkpoint at
    step 0) that load_model, generate, serve.py and train.py --init-from take. Nothing is written on an error."""
    src, out = Path(src), Path(out)
    _check_new(out)
    hf = read_json(src / "config.json")
    architecture = (hf.get("architectures") or [None])[0]
    family = FAMILIES.get(architecture)
    if family is None:
        raise InteropError(
            f"{src / 'config.json'}: architecture {architecture!r} is not supported; supported: {', '.join(FAMILIES)}"
        )
    overrides: dict[str, Any] = {"dtype": dtype}
    if max_seq_len is not None:
        overrides["max_seq_len"] = max_seq_len
    try:
        cfg = family.model_config(hf, architecture, **overrides)
        cfg.validate()
    except (ConfigError, KeyError, TypeError) as e:
        raise InteropError(
            f"{src / 'config.json'}: cannot be read as {architecture} ({type(e).__name__}: {e})"
        ) from None
    tokenizer = read_hf_tokenizer(src)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise InteropError(
            f"the tokenizer of {src} has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocab_size={cfg.vocab_size}"
        )
    params = read_params(src, family, cfg)
    with _atomic_folder(out) as tmp:
        write_run_files(tmp, Config(model=cfg), tokenizer)
        (tmp / RECORD).write_text(json.dumps({"source": str(src.resolve()), "architecture": architecture}) + "\n")
        save_params(tmp, params)
    return out


def read_params(src: Path, family: ModuleType, cfg: ModelConfig) -> dict[str, Any]:
    """The parameter tree of `cfg` (jax arrays) from the safetensors files of `src`, each tensor read from its
    memory-mapped file and converted on its own (peak memory: the converted parameters and one tensor)."""
    files = tensor_files(src)
    present = {family.canonical_name(n): n for n in files if not n.endswith(family.IGNORED_SUFFIXES)}
    if cfg.tie_embeddings:
        present.pop("lm_head.weight", None)  # a tied head's copy, where a checkpoint keeps one
    expected = {t.name: t for t in family.tensors(cfg)}
    missing, extra = sorted(expected.keys() - present.keys()), sorted(present.keys() - expected.keys())
    if missing:
        raise InteropError(f"{src}: tensors the config implies are missing: {_few(missing)}")
    if extra:
        raise InteropError(f"{src}: tensors with no counterpart in this model: {_few(extra)}")
    param_dtype = jax.numpy.dtype(cfg.dtype)
    flat: dict[str, jax.Array] = {}
    for name, tensor in expected.items():
        # A file opened for each tensor: the mapped pages it read are let go with it, not held to the end.
        with safe_open(files[present[name]], framework="numpy") as f:
            w = f.get_tensor(present[name])
        for part, array in zip(tensor.parts, tensor.to_ours(w)):
            # As jax arrays: orbax then saves them without first copying the whole tree (numpy arrays cost a
            # second copy of the parameters: 1.6 GB peak against 1.1 GB for GPT-2 small's 0.5 GB).
            flat[part.path] = jax.numpy.asarray(array, dtype=param_dtype)
    shapes = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(param_shapes(cfg)).items()}
    got = {k: tuple(v.shape) for k, v in flat.items()}
    if got != shapes:  # the tables in gpt2.py / llama.py / phi3.py disagree with the model code
        raise InteropError(
            f"internal: converted parameters differ from the model's: "
            f"{_few(sorted(set(got.items()) ^ set(shapes.items())))}"
        )
    return traverse_util.unflatten_dict(flat, sep="/")


def tensor_files(src: Path) -> dict[str, Path]:
    """Each tensor's name -> the safetensors file holding it (one file, or the shards an index lists)."""
    if (src / INDEX_FILE).is_file():
        weight_map = read_json(src / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise InteropError(f"{src / INDEX_FILE} has no weight_map")
        files = {name: src / file for name, file in weight_map.items()}
        absent = sorted({str(p) for p in files.values() if not p.is_file()})
        if absent:
            raise InteropError(f"{src / INDEX_FILE} lists shards that do not exist: {_few(absent)}")
        return files
    if (src / SINGLE_FILE).is_file():
        with safe_open(src / SINGLE_FILE, framework="numpy") as f:
            return {name: src / SINGLE_FILE for name in f.keys()}
    raise InteropError(
        f"{src} holds no {SINGLE_FILE} or {INDEX_FILE}: weights are read from safetensors only "
        "(transformers' save_pretrained writes them)"
    )


def save_params(run_dir: Path, params: Any) -> None:
    """The parameters as the run folder's checkpoint at step 0 (no optimizer state: a run starts from it with
    train.py --init-from)."""
    manager = checkpoint_manager(run_dir)
    try:
        manager.save(
            0,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"step": np.int32(0), "params": params}), data=ocp.args.JsonSave({})
            ),
        )
        manager.wait_until_finished()
    finally:
        manager.close()


def to_hf(run_dir: str | Path, out: str | Path, step: Optional[int] = None) -> tuple[Path, Optional[str]]:
    """Export a run whose model maps onto GPT-2 or Llama as a folder that transformers' AutoModelForCausalLM
    loads: model.safetensors, config.json and the tokenizer's files. Returns the folder and a note about what was
    left out (a SentencePiece tokenizer), or None."""
    run_dir, out = Path(run_dir), Path(out)
    _check_new(out)
    loaded = load_model(run_dir, step)
    cfg = loaded.config.model
    if cfg.architecture != "decoder":
        raise InteropError(
            f"{run_dir}: model.architecture={cfg.architecture!r} has no counterpart among the "
            "exported architectures (decoder-only GPT-2 and Llama)"
        )
    problems = {name: family.export_problems(cfg) for name, family in EXPORTS.items()}
    name = next((n for n, p in problems.items() if not p), None)
    if name is None:
        raise InteropError(
            f"{run_dir}: the model maps onto neither exported architecture; settings with no "
            "counterpart: " + "; ".join(f"as {n}: {', '.join(p)}" for n, p in problems.items())
        )
    family = EXPORTS[name]
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(loaded.params).items()}
    dtype = np.dtype(jax.numpy.dtype(cfg.dtype))
    tensors = {t.name: t.to_hf([flat[p.path] for p in t.parts]).astype(dtype) for t in family.tensors(cfg)}
    tok = loaded.tokenizer
    hf = dict(
        family.hf_config(cfg),
        torch_dtype=cfg.dtype,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
    )
    with _atomic_folder(out) as tmp:
        save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        note = export_tokenizer(tok, tmp)
    return out, note


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise InteropError(f"{path} does not exist")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InteropError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise InteropError(f"{path} is not a JSON object")
    return value


def _check_new(out: Path) -> None:
    if out.exists():
        raise InteropError(f"--out {out} exists already; give a folder that does not exist yet")


@contextmanager
def _atomic_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` when the block succeeds and removed when it fails."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _few(items: list, n: int = 8) -> str:
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")
