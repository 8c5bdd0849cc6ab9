"""An Ollama ``Modelfile`` for a merged model folder.

Ollama speaks Go templates, models ship Jinja chat templates, and no general translation
exists. So the template is *recognised*, not translated: the Jinja template is rendered on a
probe conversation and compared with ChatML (``<|im_start|>role\\ncontent<|im_end|>\\n``, the
format of SmolLM2, Qwen and many others). If it matches, the Modelfile gets Ollama's ChatML
template, the template's built-in system prompt (if it adds one when the conversation has none)
as ``SYSTEM``, and the ChatML markers as stop tokens. Anything else gets the documented
fallback: no ``TEMPLATE`` (Ollama then uses the template it recognises from the folder's
tokenizer files, or plain completion), the EOS token as stop, and a comment saying so.
"""

from __future__ import annotations

import re

START, END = "<|im_start|>", "<|im_end|>"

# Ollama's ChatML template (per turn; Ollama applies it to each message of a chat).
CHATML_GO_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)

_PROBE = [
    {"role": "system", "content": "S1"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def render(chat_template: str, messages: list[dict], special: dict[str, str]) -> str:
    """Render like transformers' ``apply_chat_template(add_generation_prompt=True)``;
    ``special`` are the tokenizer's special tokens (``bos_token``, ...), which templates use."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(chat_template).render(
        messages=messages, add_generation_prompt=True, **special
    )


def chatml(messages: list[dict]) -> str:
    turns = "".join(f"{START}{m['role']}\n{m['content']}{END}\n" for m in messages)
    return turns + f"{START}assistant\n"


def chatml_default_system(
    chat_template: str, special: dict[str, str] | None = None
) -> tuple[bool, str | None]:
    """(is ChatML, the system prompt it adds to a conversation without one)."""
    special = special or {}
    try:
        if render(chat_template, _PROBE, special) != chatml(_PROBE):
            return False, None
        user_only = [{"role": "user", "content": "U1"}]
        plain = render(chat_template, user_only, special)
    except Exception:  # noqa: BLE001 - a template we cannot render is simply not ChatML
        return False, None
    if plain == chatml(user_only):
        return True, None
    found = re.fullmatch(
        re.escape(f"{START}system\n") + r"(.*)" + re.escape(f"{END}\n{chatml(user_only)}"),
        plain,
        re.S,
    )
    return (True, found.group(1)) if found else (False, None)


def _quoted(text: str) -> str:
    # Modelfile triple quotes cannot be escaped: a system prompt holding them gets the fallback.
    return f'"""{text}"""'


def modelfile(chat_template: str | None, special: dict[str, str]) -> str:
    """The Modelfile text for a folder holding the merged weights and tokenizer; ``special``
    are the tokenizer's special tokens (``eos_token`` becomes a stop token)."""
    lines = [
        "# Ollama Modelfile written by `tuneplex export`; create the model from this folder:",
        "#   ollama create NAME -f Modelfile",
        "FROM .",
    ]
    is_chatml, system = False, None
    if chat_template:
        is_chatml, system = chatml_default_system(chat_template, special)
    if is_chatml and '"""' not in (system or ""):
        lines.append(f"TEMPLATE {_quoted(CHATML_GO_TEMPLATE)}")
        if system:
            lines.append(f"SYSTEM {_quoted(system)}")
        stops = [START, END]
    else:
        lines.append(
            "# The chat template is not ChatML, which is the only one this exporter translates "
            "to Go; no TEMPLATE is set, so Ollama uses the one it recognises from the tokenizer "
            "files, or plain completion. Write TEMPLATE by hand if needed."
        )
        stops = []
    eos_token = special.get("eos_token")
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
