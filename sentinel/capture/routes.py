"""Which protocol and GenAI operation a request path is, for OpenAI-compatible and Ollama servers."""

from __future__ import annotations

from functools import lru_cache

from sentinel.interaction import Operation, Protocol

_OLLAMA = {
    "/api/chat": Operation.CHAT,
    "/api/generate": Operation.TEXT_COMPLETION,
    "/api/embed": Operation.EMBEDDINGS,
    "/api/embeddings": Operation.EMBEDDINGS,
}


@lru_cache(maxsize=1024)
def classify(path: str) -> tuple[Protocol, Operation]:
    """Classify by path suffix, so an upstream mounted under a prefix (`/v1`, `/openai/v1`) still matches.

    >>> classify("/v1/chat/completions")
    (<Protocol.OPENAI: 'openai'>, <Operation.CHAT: 'chat'>)
    >>> classify("/api/generate")
    (<Protocol.OLLAMA: 'ollama'>, <Operation.TEXT_COMPLETION: 'text_completion'>)
    """
    trimmed = path.rstrip("/")
    if trimmed.startswith("/api/"):
        return Protocol.OLLAMA, _OLLAMA.get(trimmed, Operation.OTHER)
    if trimmed.endswith("/chat/completions"):
        return Protocol.OPENAI, Operation.CHAT
    if trimmed.endswith("/completions"):
        return Protocol.OPENAI, Operation.TEXT_COMPLETION
    if trimmed.endswith("/embeddings"):
        return Protocol.OPENAI, Operation.EMBEDDINGS
    if trimmed.startswith("/v1/") or trimmed == "/v1":
        return Protocol.OPENAI, Operation.OTHER
    return Protocol.OTHER, Operation.OTHER
