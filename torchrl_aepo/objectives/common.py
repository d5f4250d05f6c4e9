"""Helpers shared by the AEPO loss modules."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch import Tensor, nn

__all__ = ["unwrap_module", "get_input", "frozen_view"]


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


def frozen_view(module: nn.Module, tensors: Mapping[str, Tensor] | None = None) -> nn.Module:
    """A parameter-free copy of ``module`` whose tensors alias existing storage.

    The copy has the structure and ``forward`` of ``module`` (``TensorDictModule`` wrappers
    are unwrapped), but every parameter and buffer is a detached, non-persistent buffer that
    shares storage with ``module``'s tensor of the same name, or with ``tensors[name]`` when
    given (e.g. a loss's ``target_*_params.flatten_keys(".")``). In-place updates of the source
    are visible through the view; no gradient can reach the source through it.

    Args:
        module: the network to view.
        tensors: optional replacement tensors by dotted name (as in ``named_parameters``).

    Returns:
        the view, an ``nn.Module`` with no parameters.

    Examples:
        >>> net = nn.Linear(3, 1)
        >>> view = frozen_view(net)
        >>> list(view.parameters()), view.weight.data_ptr() == net.weight.data_ptr()
        ([], True)
    """
    module = unwrap_module(module)
    named = dict(module.named_parameters(remove_duplicate=False))
    named.update(module.named_buffers(remove_duplicate=False))
    if tensors is not None:
        unknown = set(tensors) - set(named)
        if unknown:
            raise KeyError(f"frozen_view: {sorted(unknown)} are not tensors of {type(module)}.")
    memo = {
        id(value): (value if tensors is None else tensors.get(name, value)).detach()
        for name, value in named.items()
    }
    view = copy.deepcopy(module, memo)
    for submodule in view.modules():
        for name in list(submodule._parameters):
            value = submodule._parameters.pop(name)
            submodule.register_buffer(name, value, persistent=False)
        submodule._non_persistent_buffers_set.update(submodule._buffers)
    return view


LOSS_FUNCTIONS = ("l2", "l1", "smooth_l1")
REDUCTIONS = ("mean", "sum", "none")


def check_loss_options(
    *, reduction: str, discount: float | None = None, loss_function: str | None = None
) -> None:
    """Validate the options the critic and diffusion/energy losses share.

    Raises:
        ValueError: naming the option, its value and what is allowed.
    """
    if discount is not None and not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be in [0, 1], got {discount}.")
    if loss_function is not None and loss_function not in LOSS_FUNCTIONS:
        raise ValueError(f"loss_function must be 'l2', 'l1' or 'smooth_l1', got {loss_function!r}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
