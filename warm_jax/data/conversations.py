"""TRL's conversational preference records, rendered to the (prompt, chosen, rejected) texts the
readers return.

A conversation is a list of {"role", "content"} messages. Explicit prompt: {"prompt": [...],
"chosen": [...], "rejected": [...]}, the responses being the assistant turns that follow the
prompt. Implicit prompt: {"chosen": [...], "rejected": [...]}, two whole conversations; the prompt
is the messages they share, and each must go on with an assistant turn.

Rendering: with the model's chat template (`tokenizer_config.json`'s `chat_template`, or
`chat_template.jinja`; rendered by jinja2 as transformers does), the prompt is the template applied
with `add_generation_prompt=True` and a response is what the template adds to it for the
assistant turn, so prompt + response is exactly the rendered conversation. Without a template the
turns are written as HH-RLHF writes them ("\\n\\nHuman: …\\n\\nAssistant:"), the response being the
assistant's text.
"""
from __future__ import annotations

import json
import os
from typing import Any

ROLES = {"system": "System", "user": "Human", "assistant": "Assistant"}


def is_conversation(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in v)


def chat_template_of(tokenizer_dir: str) -> str | None:
    """The chat template a model directory ships, or None."""
    jinja = os.path.join(tokenizer_dir, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja) as f:
            return f.read()
    cfg = os.path.join(tokenizer_dir, "tokenizer_config.json")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            t = json.load(f).get("chat_template")
        if isinstance(t, list):   # named templates: the default one
            t = next((x.get("template") for x in t if x.get("name") == "default"), None)
        return t if isinstance(t, str) else None
    return None


class Renderer:
    """Conversations to text, with a chat template or in the HH-RLHF layout."""

    def __init__(self, chat_template: str | None = None):
        self._template = None
        if chat_template is not None:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError as e:
                raise ImportError("a chat template needs jinja2: pip install 'warm_jax[import]'") \
                    from e

            def raise_exception(message):
                raise ValueError(f"the chat template refused the conversation: {message}")
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(chat_template)

    def _apply(self, messages, add_generation_prompt: bool) -> str:
        # no BOS/EOS text: the encoder adds BOS itself, and EOS ends every response
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token="", eos_token="")

    def prompt(self, messages: list[dict]) -> str:
        if self._template is not None:
            return self._apply(messages, True)
        return "".join(f"\n\n{ROLES.get(m['role'], m['role'].title())}: {m['content']}"
                       for m in messages) + "\n\nAssistant:"

    def response(self, prompt: list[dict], response: list[dict], where: str) -> str:
        if response[0]["role"] != "assistant":
            raise ValueError(f"{where}: the response starts with a {response[0]['role']!r} turn, "
                             "not 'assistant'")
        if self._template is None:
            return "\n\n".join(m["content"] if i == 0 else
                               f"{ROLES.get(m['role'], m['role'].title())}: {m['content']}"
                               for i, m in enumerate(response)).strip()
        head, full = self._apply(prompt, True), self._apply(prompt + response, False)
        if not full.startswith(head):
            raise ValueError(f"{where}: the chat template does not render the prompt as a prefix "
                             "of the conversation")
        return full[len(head):]


def split_implicit(chosen: list[dict], rejected: list[dict], where: str):
    """(prompt, chosen's rest, rejected's rest): the prompt is the messages both share."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise ValueError(f"{where}: chosen and rejected share no message to be the prompt")
    if n == len(chosen) or n == len(rejected):
        raise ValueError(f"{where}: one conversation is the other's prefix: no response to compare")
    return chosen[:n], chosen[n:], rejected[n:]


def render_record(obj: dict, renderer: Renderer, where: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) texts of a conversational record."""
    for key in ("chosen", "rejected"):
        if not is_conversation(obj.get(key)):
            raise ValueError(f"{where}: field {key!r} must be a list of {{role, content}} "
                             "messages (TRL's conversational format)")
    if "prompt" in obj:
        prompt = obj["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not is_conversation(prompt):
            raise ValueError(f"{where}: field 'prompt' must be a string or a list of "
                             "{role, content} messages")
        chosen, rejected = obj["chosen"], obj["rejected"]
    else:
        prompt, chosen, rejected = split_implicit(obj["chosen"], obj["rejected"], where)
    return (renderer.prompt(prompt), renderer.response(prompt, chosen, where),
            renderer.response(prompt, rejected, where))
