"""Field types every request body shares: printable text, names, and models that refuse fields
they do not define (a typo is a 422 naming it, not a silently ignored setting)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

# Printable-ish text: no NUL or other C0 control characters (PostgreSQL rejects NUL).
NO_CONTROL = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$"
Text = Annotated[str, StringConstraints(pattern=NO_CONTROL)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NO_CONTROL)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
