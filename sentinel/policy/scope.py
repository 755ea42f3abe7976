"""Which rules apply to a call: by route and operation (decided once per path and cached), then by
model and caller (the API-key fingerprint or Dify's `user`), which need the parsed body."""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

from sentinel.interaction import Operation
from sentinel.policy.model import Scope


def _any(value: str | None, globs: list[str]) -> bool:
    return value is not None and any(fnmatchcase(value, glob) for glob in globs)


def route_matches(scope: Scope, path: str, operation: Operation) -> bool:
    if scope.operations and operation.value not in scope.operations:
        return False
    return not scope.routes or _any(path, scope.routes)


def route_admits(scope: Scope, path: str) -> bool:
    """The scope's `routes` admit the path, whatever its `operations`."""
    return not scope.routes or _any(path, scope.routes)


def needs_request(scope: Scope) -> bool:
    """Whether the scope depends on what only the request body or headers say."""
    return bool(scope.models or scope.users or scope.api_keys)


def caller_matches(scope: Scope, model: str | None, user: str | None, key_id: Callable[[], str | None]) -> bool:
    if scope.models and not _any(model, scope.models):
        return False
    if scope.users and not _any(user, scope.users):
        return False
    return not scope.api_keys or key_id() in scope.api_keys
