"""Chat templates: how a list of messages becomes the prompt a model continues, stored with the model.

A run folder may hold `chat_template.json` with the keys of ChatTemplate, or (imported from Hugging Face) a Jinja
template in tokenizer_config.json or chat_template.jinja, rendered as transformers renders it; base models with
neither get the plain default, which renders each message as `role: content` on its own line and ends with
`assistant:`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox

from mulm_jax.data.tokenizer import HF_CONFIG_FILE, special_token_text
from mulm_jax.infer.loading import InferenceError

FILE = "chat_template.json"
JINJA_FILE = "chat_template.jinja"  # where transformers saves a tokenizer's template
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class ChatTemplate:
    message: str = "{role}: {content}\n"  # one message; {role} and {content} are filled in
    generation_prompt: str = "assistant:"  # after the messages: where the model's reply starts
    stop: tuple[str, ...] = ("\nuser:", "\nsystem:")  # the reply ends where the model starts another turn

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return "".join(self.message.format(role=m["role"], content=m["content"]) for m in messages) + (
            self.generation_prompt if add_generation_prompt else ""
        )

    @classmethod
    def load(cls, run_dir: Optional[Path]) -> "ChatTemplate | JinjaChatTemplate":
        path = None if run_dir is None else Path(run_dir) / FILE
        if path is None or not path.is_file():
            return (None if run_dir is None else JinjaChatTemplate.load(Path(run_dir))) or cls()
        try:
            data = json.loads(path.read_text())
            names = {f.name for f in fields(cls)}
            unknown = set(data) - names
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
            if "stop" in data:
                data["stop"] = tuple(data["stop"])
            template = cls(**data)
            template.render([{"role": "user", "content": "x"}])
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise InferenceError(f"{path}: not a chat template ({e})") from None
        return template


class JinjaChatTemplate:
    """A Hugging Face chat template, rendered as transformers' apply_chat_template renders it: Jinja in an immutable
    sandbox with trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson` that does not escape
    HTML, the special tokens of tokenizer_config.json as variables, and the generation prompt asked for. The reply
    ends at the end-of-text token (the tokenizer's eos), so there are no stop strings."""

    stop: tuple[str, ...] = ()

    def __init__(self, source: str, special_tokens: dict[str, str]):
        self.source, self.special_tokens = source, special_tokens
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as e:
            raise InferenceError(f"the chat template does not parse: {e}") from None

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.TemplateError as e:
            raise InferenceError(f"the chat template refused these messages: {e}") from None
        except Exception as e:  # a template is code: what it raises (1 / 0, a bad call) is its error, not ours
            raise InferenceError(f"the chat template failed on these messages: {type(e).__name__}: {e}") from None

    @classmethod
    def load(cls, run_dir: Path) -> Optional["JinjaChatTemplate"]:
        """The template of tokenizer_config.json (its `default` one when it names several), else chat_template.jinja
        beside it; None when the folder has neither."""
        config_path = run_dir / HF_CONFIG_FILE
        if not config_path.is_file():
            return None
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise InferenceError(f"{config_path} is not valid JSON: {e}") from None
        source = config.get("chat_template")
        if isinstance(source, list):  # [{"name": ..., "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if source is None and (run_dir / JINJA_FILE).is_file():
            source = (run_dir / JINJA_FILE).read_text(encoding="utf-8")
        if not isinstance(source, str):
            return None
        tokens = {name: special_token_text(config.get(name)) for name in SPECIAL_TOKENS}
        return cls(source, {name: text for name, text in tokens.items() if text is not None})


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, which transformers uses to find the assistant's text: as is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
