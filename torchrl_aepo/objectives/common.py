"""Helpers shared by the AEPO loss modules."""

from __future__ import annotations

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

__all__ = ["unwrap_module", "get_input"]


def unwrap_module(module: nn.Module) -> nn.Module:
    """Return the tensor-signature network inside a ``TensorDictModule`` (or the module itself).

    The losses call networks with tensors on the hot path; their keys come from the loss's
    ``tensor_keys`` (see ``set_keys``), so a wrapped network's own in/out keys are not used.
    """
    if isinstance(module, TensorDictModuleBase) and hasattr(module, "module"):
        return module.module
    return module


def get_input(
    tensordict: TensorDictBase, key: NestedKey, loss_name: str, last_dim: int | None = None
) -> Tensor:
    """Read ``key`` from ``tensordict`` with an error that names the key and the loss.

    Args:
        tensordict: the input batch.
        key: the key to read.
        loss_name: name of the loss, for the error message.
        last_dim: if given, the expected size of the last dimension.

    Raises:
        KeyError: if the key is missing (the message lists the keys present and ``set_keys``).
        ValueError: if the last dimension does not match ``last_dim``.
    """
    value = tensordict.get(key, None)
    if value is None:
        present = sorted(str(k) for k in tensordict.keys(include_nested=True, leaves_only=True))
        raise KeyError(
            f"{loss_name} expected the key {key!r} in the input tensordict, which has {present}. "
            f"Use {loss_name}.set_keys(...) to read a different key."
        )
    if last_dim is not None and (value.ndim == 0 or value.shape[-1] != last_dim):
        raise ValueError(
            f"{loss_name}: {key!r} must have last dimension {last_dim}, got shape "
            f"{tuple(value.shape)}."
        )
    return value
