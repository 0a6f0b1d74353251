"""Building OpenAPI 3.0 documents: the envelope (bearer security on every operation but the open ones),
operations whose errors all answer the shared error shape, and object schemas. Field schemas come from the
same tables the validators use (:class:`~rk_common.validation.Number`), so a document cannot promise a
range a server refuses."""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
OPEN_ROUTES = frozenset({("get", "/health"), ("get", "/health/ready")})

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": "string", "nullable": True}}}}}
ANY_OBJECT = {"type": "object"}


def obj(required: Iterable[str] = (), extra: Optional[bool] = None, **props: Dict[str, Any]) -> Dict[str, Any]:
    """An object schema; ``extra`` False forbids properties not listed (None leaves OpenAPI's default)."""
    out: Dict[str, Any] = {"type": "object", "properties": props}
    if extra is not None:
        out["additionalProperties"] = extra
    required = list(required)
    if required:
        out["required"] = required
    return out


def op(summary: str, ok: Dict[str, Any], body: Optional[Dict[str, Any]] = None, *,
       content: Optional[Dict[str, Any]] = None, params: Tuple[str, ...] = (), body_optional: bool = False,
       error: Dict[str, Any] = ERROR) -> Dict[str, Any]:
    """One operation: ``ok`` maps media types to the 200 schema; every error answers ``error``. The request
    body is the JSON schema ``body``, or ``content`` (media type -> {"schema": ...}) for other media."""
    out: Dict[str, Any] = {"summary": summary, "responses": {
        "200": {"description": "success", "content": {mt: {"schema": s} for mt, s in ok.items()}},
        "default": {"description": "an error", "content": {JSON: {"schema": error}}}}}
    if body is not None:
        content = {JSON: {"schema": body}}
    if content is not None:
        out["requestBody"] = {"required": not body_optional, "content": content}
    if params:
        out["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                             for p in params]
    return out


def document(title: str, version: str, description: str, paths: Dict[str, Dict[str, Any]],
             error_schema: Dict[str, Any] = ERROR, open_routes=OPEN_ROUTES) -> Dict[str, Any]:
    """An OpenAPI 3.0 document around ``paths``: every operation needs the bearer token except
    ``open_routes`` ((method, path) pairs)."""
    secured = {path: {method: {**operation, "security": [] if (method, path) in open_routes else [{"bearer": []}]}
                      for method, operation in ops.items()} for path, ops in paths.items()}
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version, "description": description},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Error": error_schema}},
        "paths": secured,
    }


def auth_description(what: str, error_fields: str = "\"code\", \"message\"") -> str:
    """The documents' shared description: what the service does, auth and the error shape."""
    return (f"{what} With a token set, every route except GET /health and /health/ready (this document included) needs "
            f"'Authorization: Bearer <token>'; errors are {{\"error\": {{{error_fields}}}}}.")
