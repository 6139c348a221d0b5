"""TRL's conversational preference records: explicit and implicit prompts, rendered in the HH
layout or with the model's chat template, so that prompt + response is the rendered conversation."""
import json

import pytest

from warm_jax.data.conversations import Renderer, chat_template_of, render_record
from warm_jax.data.preferences import DataError, read_preferences

U = {"role": "user", "content": "What is 2+2?"}
A4 = {"role": "assistant", "content": "4"}
A5 = {"role": "assistant", "content": "5"}
SYS = {"role": "system", "content": "Be brief."}
# ChatML, as Qwen2's tokenizer_config.json ships it (shortened)
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_explicit_and_implicit_prompts_in_the_hh_layout(tmp_path):
    f = _write(tmp_path / "p.jsonl", [
        {"prompt": [SYS, U], "chosen": [A4], "rejected": [A5]},          # explicit
        {"chosen": [SYS, U, A4], "rejected": [SYS, U, A5]},              # implicit
        {"prompt": "What is 2+2?", "chosen": [A4], "rejected": [A5]}])   # a string prompt
    pairs, summary = read_preferences(f)
    assert summary.format == "trl" and len(pairs) == 3
    assert pairs[0].prompt == "\n\nSystem: Be brief.\n\nHuman: What is 2+2?\n\nAssistant:"
    assert (pairs[0].chosen, pairs[0].rejected) == ("4", "5")
    assert pairs[1] == pairs[0].__class__(pairs[0].prompt, "4", "5", f"{f}:2")
    assert pairs[2].prompt == "\n\nHuman: What is 2+2?\n\nAssistant:"


def test_a_chat_template_renders_prompt_plus_response_as_the_conversation(tmp_path):
    r = Renderer(CHATML)
    p, c, x = render_record({"chosen": [U, A4], "rejected": [U, A5]}, r, "f:1")
    assert p == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert c == "4<|im_end|>\n" and x == "5<|im_end|>\n"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    assert chat_template_of(str(tmp_path)) == CHATML
    f = _write(tmp_path / "p.jsonl", [{"chosen": [U, A4], "rejected": [U, A5]}])
    pairs, _ = read_preferences(f, chat_template=chat_template_of(str(tmp_path)))
    assert pairs[0].prompt + pairs[0].chosen == r._apply([U, A4], False)


@pytest.mark.parametrize("row, want", [
    ({"chosen": [U, A4], "rejected": [{"role": "user", "content": "x"}, A5]}, "share no message"),
    ({"chosen": [U], "rejected": [U, A5]}, "the other's prefix"),
    ({"prompt": [U], "chosen": [U], "rejected": [A5]}, "starts with a 'user' turn"),
    ({"prompt": [U], "chosen": [{"role": "assistant"}], "rejected": [A5]}, "field 'chosen' must"),
])
def test_malformed_conversations_name_the_line(tmp_path, row, want):
    f = _write(tmp_path / "p.jsonl", [row])
    with pytest.raises(DataError, match=want) as e:
        read_preferences(f)
    assert str(e.value).startswith(f"{f}:1: ")
