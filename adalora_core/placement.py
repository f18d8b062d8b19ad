"""Where the engine runs encoder forwards: a vocabulary the engine and the service's settings
share, kept free of torch so that reading settings stays cheap."""

from __future__ import annotations

from typing import Literal, get_args

EncoderPlacement = Literal["auto", "process", "thread"]
ENCODER_PLACEMENTS: tuple[EncoderPlacement, ...] = get_args(EncoderPlacement)
