"""REST routes under /api/v1, one module per area; each router carries its access rule."""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn, TypeVar

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api.deps import PAGE_USER_409
from api.models import ErrorOut

MAX_BODY_BYTES = 4096
M = TypeVar("M", bound=BaseModel)

_ERR = {"model": ErrorOut}
PUBLIC_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**_ERR, "description": "login required (zone counts and signs set to need login)"}
}
VIEWER_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**_ERR, "description": "login required"},
    404: {**_ERR, "description": "no such thing on this site"},
}
TECHNICIAN_ERRORS: dict[int | str, dict[str, Any]] = {
    **VIEWER_ERRORS,
    403: {**_ERR, "description": "needs the technician role"},
}
MANAGER_ERRORS: dict[int | str, dict[str, Any]] = {
    **VIEWER_ERRORS,
    403: {**_ERR, "description": "needs the manager role, or sent by a page of another origin"},
    413: {**_ERR, "description": "the body is too large"},
    409: {
        **_ERR,
        "description": "the gateway refused the action, or runs another site file than this "
        f"API; or {PAGE_USER_409}",
    },
    422: {
        "description": "the request body is not valid",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
        },
    },
}


def invalid(loc: tuple[str | int, ...], msg: str, value: Any = None) -> NoReturn:
    """Answer 422 in FastAPI's own validation-error shape, naming where and what is wrong."""
    raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def not_found(what: str) -> NoReturn:
    raise HTTPException(404, what)


def echo(value: str) -> str:
    """A client's id quoted into an answer: cut short (a 5,000-character id came back
    whole) and always encodable."""
    return repr(encodable(value[:ECHO_CHARS])) + ("…" if len(value) > ECHO_CHARS else "")


async def parse_body(request: Request, model: type[M]) -> M:
    """Parse the JSON body after the access check ran (an empty body means all defaults)."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        invalid(("body",), f"the body is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        invalid(("body",), "the body is not UTF-8 text")
    if not text.strip():
        text = "{}"
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**e, "loc": ("body", *e["loc"]), "input": _printable(e.get("input"))}
                for e in exc.errors(include_url=False, include_context=False)
            ]
        ) from None


def encodable(text: str) -> str:
    """``text`` with every character UTF-8 cannot encode (a lone surrogate, which JSON's
    ``\\ud800`` escape carries into a str) as "?": echoed into a response, it made the
    encoding fail, a 500 with a traceback instead of the 422."""
    return text.encode("utf-8", "replace").decode("utf-8")


ECHO_CHARS = 200  # of a client's input quoted back in an error


def _printable(value: Any) -> Any:
    """Error inputs echoed back must be JSON: cut long text short, never raw bytes or lone
    surrogates, and a NaN or infinity as the text it was sent as (JSON has no such number:
    the response could not be encoded, a 500 instead of the 422)."""
    if isinstance(value, bytes | str):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        return encodable(text[:ECHO_CHARS])
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # "NaN", "Infinity", "-Infinity"
    return (
        value
        if isinstance(value, int | float | bool | None)
        else encodable(str(value)[:ECHO_CHARS])
    )


def short_input(value: Any) -> Any:
    """An error's input as echoed back in a 422: small values as they are, anything longer
    cut to the 200 characters ``_printable`` keeps (a whole body must never come back)."""
    if isinstance(value, dict | list | tuple):
        try:
            # allow_nan=False: a NaN inside would pass here, then fail the response's encoding
            text = json.dumps(jsonable_encoder(value), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return _printable(str(value))
        return value if len(text) <= 200 and encodable(text) == text else _printable(text)
    return _printable(value)


def request_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra documenting a body that the route parses itself (see parse_body)."""
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
