"""Callbacks: user code that receives the training records as they are made.

:func:`eqkern.training.engine.fit` (and so ``train``, ``train_vgg``, ``train_teacher``) takes
``callbacks=``: ``None``, one callback, or an iterable of them. A callback is either

- a :class:`Callback` (subclass it, override what you need): ``on_batch_end(record)`` after each
  batch, ``on_epoch_end(record)`` after each epoch (once its test evaluation, metrics and
  checkpoint are done), ``close()`` once at the end of training, also after an error or Ctrl-C;
- or a plain callable ``f(record)``: called with each **epoch** record only (the common case:
  ``callbacks=history.append``, or a function that logs somewhere).

Records are dicts of plain Python values (numbers, lists of numbers, ``None``). The batch record:
``epoch`` (1-based), ``batch`` (1-based within the epoch), ``step`` (1-based over the whole
run), ``examples``, ``loss``, ``acc`` (%), ``settle_steps``, ``lr`` (one per param group), for
CRNNs ``state_abs`` and ``state_spread`` (per layer: mean |state| and std over the batch's
images) and ``update_abs`` (per weight layer), and ``kappa`` for a CRNN
with LE / KD signals trained by EP or BPTT (κ weighs nothing else). The epoch record
is the engine's history record (what ``metrics.jsonl`` holds; ``test_acc``/``test_loss`` are
``None`` without test data). Each callback gets its own copy, so one that changes its record
changes neither the run's history nor what the next callback sees.

Batch records cost the engine a host synchronisation per batch, so it makes them only when some
callback wants them: :attr:`Callback.wants_batches`, by default True exactly when the subclass
overrides :meth:`Callback.on_batch_end`.

:class:`CallbackList` is what the engine uses: it validates ``callbacks=`` and calls them in the
order given.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Union

from eqkern.errors import ArgumentTypeError
from eqkern.validate import describe

__all__ = ["Callback", "CallbackList", "CallbacksArg"]

_ACCEPTED = ("None, a Callback (eqkern.training.callbacks.Callback), a function of the epoch "
             "record, or a list of those")


class Callback:
    """Base of the training callbacks: every hook is a no-op, override the ones you need."""

    def on_batch_end(self, record: dict[str, Any]) -> None:
        """After each training batch; ``record``: see the module docstring."""

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """After each epoch (its test evaluation, metrics and checkpoint done)."""

    def close(self) -> None:
        """Once, when training ends, however it ends (normally, an error, Ctrl-C)."""

    @property
    def wants_batches(self) -> bool:
        """Whether the engine should make batch records for this callback (they cost a host
        sync per batch). Default: True when :meth:`on_batch_end` is overridden."""
        return type(self).on_batch_end is not Callback.on_batch_end


class _EpochFunction(Callback):
    """A plain callable as a callback: called with each epoch record."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any]) -> None:
        self.fn = fn

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.fn(record)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fn!r})"


# What ``callbacks=`` accepts (for the signatures of the entry points).
_One = Union[Callback, Callable[[dict], Any]]
CallbacksArg = Union[None, _One, Iterable[_One]]


def _as_callback(item: Any, value: Any) -> Callback:
    """One element of ``callbacks=`` as a :class:`Callback` (``value``: the whole argument, for
    the message)."""
    if isinstance(item, Callback):
        return item
    if isinstance(item, type):
        # A class is callable, so without this check TensorBoardCallback (not ...("runs/tb"))
        # would be called with each record, a confusing failure at the end of epoch 1.
        hint = (f"; pass an instance, e.g. {item.__name__}(...)" if issubclass(item, Callback)
                else "")
        raise ArgumentTypeError(f"callbacks must be {_ACCEPTED}, got the class "
                                f"{item.__name__}{hint}")
    if callable(item):
        return _EpochFunction(item)
    where = "" if item is value else f" (in {describe(value)})"
    raise ArgumentTypeError(f"callbacks must be {_ACCEPTED}, got {describe(item)}{where}")


class CallbackList(Callback):
    """The callbacks of one run, validated, called in order.

    ``callbacks``: ``None``, a :class:`Callback`, a callable (called with each epoch record), or
    an iterable of those; anything else (a string, a dict, a Callback class instead of an
    instance, ...) raises :class:`~eqkern.errors.ArgumentTypeError` here, before training starts.
    An exception raised by a callback propagates (it stops training), with a note naming the
    callback; :meth:`close` still closes every callback.
    """

    def __init__(self, callbacks: CallbacksArg = None) -> None:
        self.callbacks: list[Callback] = self._parse(callbacks)
        self._closed = False

    @staticmethod
    def _parse(value: Any) -> list[Callback]:
        if value is None:
            return []
        if isinstance(value, CallbackList):
            return list(value.callbacks)
        if isinstance(value, Callback) or callable(value):
            return [_as_callback(value, value)]
        # A str/bytes/dict is iterable but never meant as a list of callbacks.
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise ArgumentTypeError(f"callbacks must be {_ACCEPTED}, got {describe(value)}")
        return [_as_callback(item, value) for item in value]

    def __len__(self) -> int:
        return len(self.callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def __repr__(self) -> str:
        return f"CallbackList({self.callbacks!r})"

    @property
    def wants_batches(self) -> bool:
        """True when some callback wants batch records (the engine makes none otherwise)."""
        return any(cb.wants_batches for cb in self.callbacks)

    def on_batch_end(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if cb.wants_batches:
                _call(cb, "on_batch_end", record)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            _call(cb, "on_epoch_end", record)

    def close(self) -> None:
        """Close every callback once (a second call does nothing), even when one raises; then
        raise the first error, with the others as notes."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for cb in self.callbacks:
            try:
                cb.close()
            except Exception as exc:  # the others must still close (flush their files)
                exc.add_note(f"raised by {_name(cb)}.close()")
                errors.append(exc)
        if errors:
            first = errors[0]
            for other in errors[1:]:
                first.add_note(f"also: {type(other).__name__}: {other} ({other.__notes__[-1]})")
            raise first


def _call(cb: Callback, hook: str, record: dict[str, Any]) -> None:
    # Each callback its own copy: the epoch record is the run's history (saved in checkpoints).
    try:
        getattr(cb, hook)(copy.deepcopy(record))
    except Exception as exc:
        exc.add_note(f"raised by the training callback {_name(cb)}.{hook}")
        raise


def _name(cb: Callback) -> str:
    """``MyCallback`` or ``my_function`` for a message (less any ``f.<locals>.`` prefix)."""
    target = cb.fn if isinstance(cb, _EpochFunction) else type(cb)
    name = getattr(target, "__qualname__", None) or repr(target)
    return name.rsplit("<locals>.", 1)[-1]
