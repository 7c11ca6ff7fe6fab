"""``@validated``: a plugin constructor checks its arguments against its own signature.

A plugin declares each parameter's type and range in its signature with pydantic
(``steps: Annotated[int, Field(ge=1, le=100_000)]``, ``success: Literal["final", "any"]``). The job
validator (``bench.spec``) reads those annotations before anything runs; this decorator applies the
same annotations, strictly (``"10"`` is not an int, ``True`` is not a number), when the constructor
is called from Python, so the two can never disagree. A violation raises ``ValueError`` naming the
class, the parameter, the value and what is allowed (pydantic's message), on one line.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from pydantic import ConfigDict, ValidationError, validate_call

F = TypeVar("F", bound=Callable[..., Any])


def validated(init: F) -> F:
    """Decorate an ``__init__`` whose parameters carry pydantic annotations."""
    checked = validate_call(config=ConfigDict(strict=True, arbitrary_types_allowed=True))(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return checked(self, *args, **kwargs)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))} {e.get('input')!r}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{type(self).__name__}: {problems}") from None

    return wrapper  # type: ignore[return-value]
