"""Split a ``torch.nn.Module``'s parameters into binary and real groups, for an optimiser pair.

    split = split_binary(model, is_binary=lambda name, p: name.endswith(".w_bin"))
    opts = [CEMA(split.binary.values()), torch.optim.Adam(split.real.values(), 1e-3)]

How other BNN code decides: larq marks a quantised layer's kernel (``precision == 1``) and its
``CaseOptimizer`` routes variables by a predicate (``Bop.is_binary_variable``); PyTorch BNN
repositories mostly test the module type or the parameter's name and shape.  Here the caller
says it: ``is_binary`` is a predicate ``(name, parameter) -> bool`` or a collection of
parameter names; left out, the module's own ``binary_names`` (minibnn's models, and the
modules ``minibnn.torch.build`` returns, list theirs) is used.  Names are
``module.named_parameters()``'s, so a group maps 1:1 to a minibnn state keyed by those names.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, NamedTuple

import torch

from minibnn.errors import MinibnnError

Predicate = Callable[[str, torch.nn.Parameter], bool]


class Split(NamedTuple):
    """Named parameters, binary and real (each ``name -> parameter``, in the module's order)."""

    binary: dict[str, torch.nn.Parameter]
    real: dict[str, torch.nn.Parameter]


def _predicate(module: torch.nn.Module, is_binary: Predicate | Collection[str] | None,
               names: list[str]) -> Predicate:
    """``is_binary`` as a predicate; names must all be the module's."""
    if callable(is_binary):
        return is_binary
    if is_binary is None:
        is_binary = getattr(module, "binary_names", None)
        if is_binary is None:
            raise MinibnnError(f"{type(module).__name__} lists no binary_names: pass is_binary, "
                               f"a predicate (name, parameter) -> bool or a list of names")
    chosen = set(is_binary)
    unknown = sorted(chosen - set(names))
    if unknown:
        raise MinibnnError(f"is_binary names {unknown}, which are not parameters of the module "
                           f"(it has {names})")
    return lambda name, p: name in chosen


def split_binary(module: torch.nn.Module,
                 is_binary: Predicate | Collection[str] | None = None) -> Split:
    """``module``'s parameters, split into ``Split(binary, real)`` by ``is_binary``."""
    named: dict[str, Any] = dict(module.named_parameters())
    test = _predicate(module, is_binary, list(named))
    split = Split({}, {})
    for name, p in named.items():
        (split.binary if test(name, p) else split.real)[name] = p
    if not split.binary:
        raise MinibnnError(f"no binary parameters: is_binary matched none of {list(named)}")
    return split


def check_owned(optimizer: torch.optim.Optimizer, params: dict[str, Any]) -> None:
    """Refuse a named parameter that is not in one of ``optimizer``'s groups (one line)."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, p in params.items():
        if id(p) not in owned:
            raise MinibnnError(f"parameter {name!r} is not one of this optimizer's parameters")


def add_checked_group(add: Callable[[dict[str, Any]], None], groups: list[dict[str, Any]],
                      check: Callable[[dict[str, Any]], Any], group: dict[str, Any]) -> None:
    """``add(group)`` (torch's ``add_param_group``, which fills in the defaults), then
    ``check`` on the filled group (minibnn's checks and messages); a group it refuses is
    taken out of ``groups`` again, so it is never stepped."""
    add(group)
    try:
        check(groups[-1])
    except MinibnnError:
        groups.pop()
        raise


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` with gradients enabled (PyTorch's ``Optimizer.step(closure)`` contract,
    called inside ``no_grad``), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
