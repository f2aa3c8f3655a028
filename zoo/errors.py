"""Typed exceptions: one family per failure, each with a message a user can act on.

The CLI prints `str(error)` on one line and exits 2; the server answers 4xx with it as JSON.
"""

from __future__ import annotations


class ZooError(Exception):
    """Base of every error the zoo raises on purpose."""


class InputError(ZooError, ValueError):
    """An input image or tensor that cannot be coded (not an image, wrong shape, too large)."""


class ImageTooLarge(InputError):
    """An image (or a stream's declared size) over the pixel limit: a server answers 413."""


class BudgetTooSmall(InputError):
    """A byte budget (`--max-bytes`, `--target-bpp`) that even the lowest quality's file does not fit."""


class BitstreamError(ZooError):
    """A compressed file or stream that is truncated, corrupt, foreign or of an unknown version."""


class TablesMissingError(ZooError):
    """An entropy model whose integer CDF tables were never computed (call `update()`)."""


class EntryNotFound(ZooError, LookupError):
    """A model, quality, metric or version that the zoo does not have."""


class IntegrityError(ZooError):
    """Downloaded or local files whose sha256 or weight fingerprint does not match the manifest."""


class HubError(ZooError):
    """The Hub (or its mirror) could not be reached, or refused a request."""


class ArchitectureError(ZooError):
    """A state dict that does not fit the architecture it was declared for."""


class DivergedError(ZooError, RuntimeError):
    """Training kept producing non-finite losses or gradients: the run stopped rather than go on from bad weights."""


class ServeError(ZooError):
    """TorchServe could not be started, reached or given a model."""


class CompileError(ZooError, RuntimeError):
    """torch.compile could not compile the network (no C++ compiler, an unsupported operation): train without it."""
