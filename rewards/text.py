"""Text of prompts and completions in either TRL form: plain strings or lists of chat messages."""

from __future__ import annotations

from typing import Any


def _content(message: Any) -> str:
    content = message.get("content", "") if isinstance(message, dict) else message
    if isinstance(content, list):  # multimodal parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def completion_text(completion: Any) -> str:
    """A completion as text: the string itself, or the assistant messages of a message list joined."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content(completion)
    if isinstance(completion, list | tuple):
        roles = [m.get("role") for m in completion if isinstance(m, dict)]
        keep = [m for m in completion if not isinstance(m, dict) or m.get("role") in ("assistant", None)]
        if "assistant" not in roles:
            keep = list(completion)
        return "\n".join(_content(m) for m in keep)
    return "" if completion is None else str(completion)


def prompt_text(prompt: Any) -> str:
    """A prompt as text: the string itself, or the contents of all its messages joined."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list | tuple):
        return "\n".join(_content(m) for m in prompt)
    return completion_text(prompt)
