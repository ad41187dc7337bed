"""Form hygiene the parameter declarations cannot express: each field once, and no NUL in any text."""

from collections import Counter

from fastapi import Request

from serve.errors import ApiError

NUL_REFUSED = "NUL characters are not allowed"


async def refuse_ambiguous_form(request: Request) -> None:
    """Refuse a repeated field (FastAPI would silently keep one of the values) and NUL in any text field or field
    name (Postgres cannot store it in a text column). The form is already parsed: this reads FastAPI's copy."""
    items = (await request.form()).multi_items()
    with_nul = sorted({name for name, value in items if "\x00" in name or (isinstance(value, str) and "\x00" in value)})
    if with_nul:
        raise ApiError(400, NUL_REFUSED, dict.fromkeys(with_nul, "contains a NUL character"))
    repeated = sorted(name for name, count in Counter(name for name, _ in items).items() if count > 1)
    if repeated:
        raise ApiError(400, f"Each form field may be sent once; repeated: {', '.join(repeated)}",
                       dict.fromkeys(repeated, "sent more than once"))
