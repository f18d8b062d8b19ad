"""Adapter files on disk: the bundle (read by everyone) and the exporters built on it."""

from adalora_core.formats.bundle import (
    AdapterMeta,
    AdapterWeights,
    BundleError,
    ModuleDelta,
    read_adapter,
    write_bundle,
    zip_bundle,
)

__all__ = [
    "AdapterMeta",
    "AdapterWeights",
    "BundleError",
    "ModuleDelta",
    "read_adapter",
    "write_bundle",
    "zip_bundle",
]
