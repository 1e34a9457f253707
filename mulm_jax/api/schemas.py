"""Request bodies: JSON read under a size limit and validated by a pydantic model whose errors name the field; the
models of bodies that carry a config section are made from its dataclass (config_body)."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Iterable, TypeVar, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.requests import Request

from mulm_jax.api.errors import ApiError
from mulm_jax.config_schema import Option, options


class ApiModel(BaseModel):
    """A request body (or a part of one): unknown fields refused, no type coercion but whole numbers as integers, a
    JSON `null` taken as an absent field (its default; `None` for a field that may be left out), finite numbers
    only. The OpenAPI description says what this accepts (see mulm_jax.api.openapi)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


Body = TypeVar("Body", bound=ApiModel)


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def one_of(expected: str) -> WrapValidator:
    """Validation of a union (or any type) whose failure is one error: `expected ...`, instead of one per branch."""

    def validate(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_value", "expected {expected}", {"expected": expected}) from None

    return WrapValidator(validate)


Int = Annotated[int, BeforeValidator(_whole_number)]  # 3.0 is 3; true and "3" are not integers
TokenId = Annotated[Int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Text = Annotated[str, Field(min_length=1)]


class ConfigBody(ApiModel):
    """A request body made by config_body from a config dataclass's fields."""

    options: ClassVar[tuple[Option, ...]] = ()

    def config_values(self) -> dict[str, Any]:
        """The fields as keyword arguments of the config dataclass (a list field's value, or values, as a tuple)."""
        values = {}
        for option in self.options:
            value = getattr(self, option.public)
            values[option.name] = (
                tuple(value if isinstance(value, (list, tuple)) else [value]) if option.many else value
            )
        return values


def config_body(
    name: str, cls: type, *, doc: str, exclude: Iterable[str] = (), required: Iterable[str] = ()
) -> type[ConfigBody]:
    """The request body of config dataclass `cls`'s fields (config_schema.options), each under its public name with
    its type, default, bounds and help as `description`: a Literal as an enum, a string non-empty, a tuple as one
    value or a non-empty array of them. The fields named in `required` have no default."""
    fields = tuple(options(cls, exclude))
    model = create_model(
        name,
        __base__=ConfigBody,
        __doc__=doc,
        **{
            option.public: (
                _body_type(option),
                Field(... if option.name in required else option.default, description=option.help),
            )
            for option in fields
        },
    )
    model.options = fields
    return model


def _body_type(option: Option) -> Any:
    item = Annotated[option.type, Field(**option.bounds)] if option.bounds else option.type
    if option.type is int:
        item = Annotated[item, BeforeValidator(_whole_number)]  # Int, with the bounds first (in the schema too)
    elif option.type is str:
        item = Annotated[item, Field(min_length=1)]
    if not option.many:
        return item
    return Annotated[
        Union[item, Annotated[list[item], Field(min_length=1)]],
        one_of(f"one {option.public} or a non-empty array of them"),
    ]


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request's JSON; 413 past `max_bytes` (read no further), 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the request body has {declared} bytes: the limit is {max_bytes}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"the request body is over the limit of {max_bytes} bytes", code="body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


def validate(model: type[Body], data: Any) -> Body:
    """`data` as `model`, or the 400 of its first error, naming the field (`messages[0].content`) and the value."""
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _first_error(model, e.errors()[0]) from None


def _first_error(model: type[ApiModel], error: dict) -> ApiError:
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    if error["type"] == "missing":
        return ApiError(400, f"{param!r} is required", param=param, code="missing_field")
    if error["type"] == "extra_forbidden":
        accepted = f"; this route accepts {', '.join(sorted(model.model_fields))}" if len(error["loc"]) == 1 else ""
        return ApiError(400, f"unrecognized request field {param!r}{accepted}", param=param, code="unknown_field")
    return bad_value(param, error["input"], error["msg"][0].lower() + error["msg"][1:])


def bad_value(param: str, value: Any, why: str) -> ApiError:
    """The 400 for a field whose value is refused: `param=VALUE is not valid: expected ...` (`why`)."""
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ApiError(400, f"{param}={shown} is not valid: {why}", param=param, code="invalid_value")
