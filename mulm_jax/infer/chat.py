"""Chat templates: how a list of messages becomes the prompt a model continues, stored with the model.

A run folder may hold `chat_template.json` with the keys of ChatTemplate; base models without one get the
plain default, which renders each message as `role: content` on its own line and ends with `assistant:`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

from mulm_jax.infer.loading import InferenceError

FILE = "chat_template.json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    message: str = "{role}: {content}\n"  # one message; {role} and {content} are filled in
    generation_prompt: str = "assistant:"  # after the messages: where the model's reply starts
    stop: tuple[str, ...] = ("\nuser:", "\nsystem:")  # the reply ends where the model starts another turn

    def render(self, messages: Sequence[dict]) -> str:
        return "".join(self.message.format(role=m["role"], content=m["content"]) for m in messages) + \
            self.generation_prompt

    @classmethod
    def load(cls, run_dir: Optional[Path]) -> "ChatTemplate":
        path = None if run_dir is None else Path(run_dir) / FILE
        if path is None or not path.is_file():
            return cls()
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
