"""One launch per phase on CUDA: a settle phase (or one convergence-check chunk) captured as a
``torch.cuda.CUDAGraph`` and replayed (the ``cuda_graph=True`` option of :func:`eqkern.settle`).

Why: the ``cpp`` and ``triton`` settle loops queue a few kernels per layer and step from the host
and never wait on the device, so their phase is a fixed sequence of launches for fixed shapes; its
host-side launch overhead (two custom-op calls per layer and step, ~0.5–0.8 ms per step) goes
away when the sequence is recorded once and replayed as one graph.

What is safe, and how it is kept safe:

* **Static buffers, not the caller's tensors.** A graph reads and writes fixed addresses, while
  every phase of :func:`eqkern.ep_gradients` starts from fresh tensors (``init_state``, clones). So
  a :class:`CapturedPhase` owns copies of ``x``, the state, a per-sample β tensor and the targets;
  a replay copies the caller's values in, replays, and copies the state back (a few state-sized
  copies against T steps of kernels). The kernels are the same, in the same order, on tensors of
  the same shapes and strides, so the result is the eager one.
* **Parameters are read by address.** An optimizer's in-place update (and ``load_state_dict``,
  which copies into the existing tensors) is seen by the next replay. ``model.to()`` or anything
  that replaces a parameter's storage changes its ``data_ptr`` and therefore the key
  (:func:`model_signature`): the phase is captured again. An old graph is then never replayed
  unless every tensor is back at the same addresses with the same layout, in which case it reads
  the current values.
* **Python numbers are baked in.** A float β, ``model.kappa`` (the κ schedule changes it), the
  layers' α/γ and the cuDNN/TF32 switches become kernel arguments at capture, so they are part of
  the key. A per-sample β tensor is copied like the state.
* **Warm-up first, on a side stream** (PyTorch's rule for capture): the first run compiles the
  Triton kernels and lets cuDNN allocate its workspaces outside the graph.
* **Bounded and weak.** :class:`GraphCache` keeps at most :data:`MAX_GRAPHS` graphs (least
  recently used dropped first), each weakly keyed by its model, so a deleted model frees its
  graphs (and their memory pools: each graph has its own, since replays need not follow capture
  order). Not thread-safe: one thread settles at a time, as with the eager backends' state.

Where it cannot be used, the phase runs eagerly (the results are the same) and :func:`warn_once`
says why, once per reason and process: not on CUDA, a backend other than ``cpp``/``triton``, a
capture already under way (the caller is capturing us), targets of an unknown type, or a capture
that raised (that key is then remembered and runs eagerly without trying again).
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any

import torch

from eqkern.backends.base import Backend, PhaseInputs
from eqkern.errors import first_line
from eqkern.model.auxiliary import Targets

CAPTURE_BACKENDS = ("cpp", "triton")  # host loops that never synchronise with the device
# free, +β, −β (±β for random_sign) phases, with tol their chunk and tail chunk, for the full and
# the last batch of an epoch, and evaluation's free phase: 16 keeps a training loop from thrashing.
MAX_GRAPHS = 16
WARMUP_RUNS = 2  # PyTorch asks for "a few"; the first one does the compiles and lazy inits

# chunk(phase, last): phase.steps steps in place on phase.state; with ``last`` (one buffer per
# layer) also the max change of the last step as a 0-d device tensor (convergence.phase_chunk).
Chunk = Callable[[PhaseInputs, list | None], torch.Tensor | None]
# runner(phase): one chunk of ``phase`` as run_phase calls it (eagerly or by a replay).
Runner = Callable[[PhaseInputs], torch.Tensor | None]

_WARNED: set[str] = set()


def warn_once(reason: str, message: str, *, fallback: bool = True) -> None:
    """``warnings.warn(message)`` the first time ``reason`` comes up in this process;
    ``fallback``: the message says that the phase runs eagerly."""
    if reason in _WARNED:
        return
    _WARNED.add(reason)
    what = "falls back to the eager phase" if fallback else "is slower than it should be"
    warnings.warn(f"eqkern: cuda_graph=True {what}: {message} (warned once per process)",
                  RuntimeWarning, stacklevel=4)


# -- the key --------------------------------------------------------------------------------------


def tensor_sig(t: Any) -> tuple:
    """``(shape, stride, dtype, device)`` of a tensor (or of any object with those attributes)."""
    return tuple(t.shape), tuple(t.stride()), t.dtype, t.device


class UnsupportedTargets(Exception):
    """Targets whose tensors this module does not know how to find (not a tensor or Targets)."""


def target_tensors(y: object) -> list[torch.Tensor]:
    """The tensors of a phase's targets, in a fixed order: ``None`` → none; a ``(batch,)`` tensor;
    :class:`~eqkern.model.auxiliary.Targets` → labels, then the teacher features."""
    if y is None:
        return []
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, Targets):
        return [y.labels, *(y.features or ())]
    raise UnsupportedTargets(f"targets of type {type(y).__name__} (expected a tensor or Targets)")


def model_signature(model: torch.nn.Module) -> tuple:
    """What the captured kernels read from ``model``: every parameter and buffer by address and
    layout, and the Python numbers that become kernel arguments (κ, the layer specs with α/γ, the
    augmentation with τ, the skip links' pool factors)."""
    tensors = tuple((t.data_ptr(), tensor_sig(t))
                    for t in itertools.chain(model.parameters(), model.buffers()))
    consts = (getattr(model, "kappa", None), getattr(model, "specs", None),
              getattr(model, "augment", None), getattr(model, "feedback_mode", None),
              getattr(model, "readout", None),
              tuple(tuple(pair) for pair in getattr(model, "skips", ())),
              tuple(getattr(link, "factor", None) for link in getattr(model, "skip_links", ())))
    return tensors, consts


def math_flags() -> tuple:
    """The global switches that choose kernels (and so are fixed at capture)."""
    return (torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())


def phase_key(backend: str, phase: PhaseInputs, track: bool, model_sig: Hashable,
              flags: Hashable = ()) -> tuple:
    """The cache key of one captured chunk: everything that, if it differed, would make a replay
    compute something other than the eager phase.

    ``track``: whether the chunk also returns the last step's change (a ``tol`` check). A float β
    is keyed by value (baked into the kernels), a β tensor by layout (copied at each replay)."""
    beta = phase.beta
    beta_sig = ("tensor", tensor_sig(beta)) if isinstance(beta, torch.Tensor) else ("float", float(beta))
    targets = phase.targets
    return (backend, phase.schedule, int(phase.steps), bool(track), tensor_sig(phase.x),
            tuple(tensor_sig(s) for s in phase.state), beta_sig,
            type(targets).__name__, tuple(tensor_sig(t) for t in target_tensors(targets)),
            model_sig, flags)


# -- the cache ------------------------------------------------------------------------------------


class GraphCache:
    """A least-recently-used map ``(owner, key) → value`` of at most ``max_entries`` values that
    holds its owners weakly: when an owner is collected, its values are dropped."""

    def __init__(self, max_entries: int = MAX_GRAPHS) -> None:
        self.max_entries = max_entries
        self.evictions = 0  # entries dropped for room (not for a collected owner)
        self._items: OrderedDict[tuple[int, Hashable], tuple[weakref.ref, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, owner: object, key: Hashable) -> Any:
        """The value of ``(owner, key)`` (now the most recent), or None."""
        k = (id(owner), key)
        item = self._items.get(k)
        if item is None or item[0]() is not owner:  # an id reused by a new object is a miss
            return None
        self._items.move_to_end(k)
        return item[1]

    def put(self, owner: object, key: Hashable, value: Any) -> None:
        """Store ``value``, dropping the least recently used entries beyond ``max_entries``."""
        k = (id(owner), key)
        items = self._items

        def forget(ref: weakref.ref, k=k) -> None:
            if k in items and items[k][0] is ref:
                del items[k]

        items[k] = (weakref.ref(owner, forget), value)
        items.move_to_end(k)
        while len(items) > self.max_entries:
            items.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._items.clear()


# -- capture and replay ---------------------------------------------------------------------------


def _static_copy(t: torch.Tensor) -> torch.Tensor:
    """A buffer with ``t``'s shape, strides and values (``empty_like`` keeps a dense layout)."""
    return torch.empty_like(t).copy_(t)


@dataclass
class CapturedPhase:
    """A captured chunk and the buffers it reads and writes.

    static: the phase on the graph's own ``x``, state, β and targets tensors; change: the 0-d
    tensor the graph writes the last step's change into (None when not tracked)."""

    graph: torch.cuda.CUDAGraph
    static: PhaseInputs
    change: torch.Tensor | None

    def replay(self, phase: PhaseInputs) -> torch.Tensor | None:
        """Run ``phase`` (of this key) by a replay: values in, replay, state out."""
        s = self.static
        pairs = [(s.x, phase.x), *zip(s.state, phase.state),
                 *zip(target_tensors(s.targets), target_tensors(phase.targets))]
        if isinstance(s.beta, torch.Tensor):
            pairs.append((s.beta, phase.beta))
        for dst, src in pairs:
            dst.copy_(src)
        self.graph.replay()
        for dst, src in zip(phase.state, s.state):
            dst.copy_(src)
        return self.change


def _static_targets(y: object) -> object:
    if isinstance(y, Targets):
        return Targets(_static_copy(y.labels),
                       None if y.features is None else [_static_copy(f) for f in y.features])
    return None if y is None else _static_copy(y)


def static_inputs(phase: PhaseInputs) -> PhaseInputs:
    """``phase`` on fresh copies of its tensors (a float β stays a float)."""
    beta = _static_copy(phase.beta) if isinstance(phase.beta, torch.Tensor) else phase.beta
    return replace(phase, x=_static_copy(phase.x), state=[_static_copy(s) for s in phase.state],
                   beta=beta, targets=_static_targets(phase.targets))


def record(chunk: Chunk, static: PhaseInputs,
           last: list[torch.Tensor] | None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor | None]:
    """Warm ``chunk`` up on a side stream, then capture it: ``(graph, change tensor or None)``.

    Raises what ``torch.cuda.graph`` raises (e.g. a host sync inside the chunk)."""
    device = static.x.device
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.no_grad():
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):  # on the static copies: the caller's tensors stay as they are
                chunk(static, last)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            change = chunk(static, last)
    return graph, change


def capture(chunk: Chunk, phase: PhaseInputs, track: bool) -> CapturedPhase:
    """``chunk`` of ``phase`` captured on static copies of its tensors (:func:`record`)."""
    static = static_inputs(phase)
    last = [torch.empty_like(s) for s in static.state] if track else None
    graph, change = record(chunk, static, last)
    return CapturedPhase(graph, static, change)


_FAILED = object()  # a key whose capture raised: run it eagerly from now on


class PhaseGraphs:
    """The process's captured phases (a :class:`GraphCache`) and what happened to them.

    ``captures``: graphs captured; ``replays``: chunks run by a replay; ``failures``: captures
    that raised (their keys run eagerly)."""

    def __init__(self, max_entries: int = MAX_GRAPHS) -> None:
        self.cache = GraphCache(max_entries)
        self.captures = self.replays = self.failures = 0

    def run(self, be: Backend, model: torch.nn.Module, phase: PhaseInputs, track: bool,
            chunk: Chunk, eager: Runner) -> torch.Tensor | None:
        """One chunk of ``phase``: replayed (captured first on a miss), or ``eager`` when the
        capture raised."""
        key = phase_key(be.name, phase, track, model_signature(model), math_flags())
        entry = self.cache.get(model, key)
        if entry is None:
            entry = self._capture(be, model, phase, track, chunk, key)
        if entry is _FAILED:
            return eager(phase)
        self.replays += 1
        return entry.replay(phase)

    def _capture(self, be: Backend, model: torch.nn.Module, phase: PhaseInputs, track: bool,
                 chunk: Chunk, key: Hashable) -> CapturedPhase | object:
        """Capture ``key`` into the cache; on any exception (a genuine error in the chunk
        too: the eager run then raises it) remember the key as failed, warn once per type."""
        try:
            entry = capture(chunk, phase, track)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run it eagerly
            self.failures += 1
            self.cache.put(model, key, _FAILED)
            warn_once(f"capture:{type(exc).__name__}",
                      f"capturing the {be.name} phase raised {first_line(exc)}")
            return _FAILED
        self.captures += 1
        self.cache.put(model, key, entry)
        if self.cache.evictions > 4 * self.cache.max_entries:
            warn_once("thrashing", f"{self.captures} captures so far, more keys than the "
                      f"{self.cache.max_entries} graphs kept (shapes, steps or a float β that keep "
                      f"changing?); each capture costs a few eager phases", fallback=False)
        return entry

    def clear(self) -> None:
        self.cache.clear()
        self.captures = self.replays = self.failures = 0


GRAPHS = PhaseGraphs()


def fallback_reason(backend: str, phase: PhaseInputs) -> tuple[str, str] | None:
    """``(reason, message)`` when ``phase`` cannot be captured on ``backend``, else None."""
    device = phase.x.device
    if device.type != "cuda":
        return "device", f"the phase runs on {device.type}, and CUDA graphs need CUDA tensors"
    if backend not in CAPTURE_BACKENDS:
        message = (f"backend {backend!r} is not captured (only "
                   f"{' and '.join(CAPTURE_BACKENDS)}: their loops never wait on the device)")
        return f"backend:{backend}", message
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return "nested", "a CUDA graph capture is already under way on this stream"
    try:
        target_tensors(phase.targets)
    except UnsupportedTargets as exc:
        return "targets", f"the cache refuses {exc}"
    return None


def chunk_runner(be: Backend, model: torch.nn.Module, phase: PhaseInputs, track: bool,
                 chunk: Chunk, eager: Runner) -> Runner:
    """The runner of ``phase``'s chunks for ``cuda_graph=True``: replays of captured graphs, or
    ``eager`` (with a warning, once per reason) where capture cannot be used."""
    why = fallback_reason(be.name, phase)
    if why is not None:
        warn_once(*why)
        return eager

    def run(ph: PhaseInputs) -> torch.Tensor | None:
        if ph.steps == 0:  # nothing to launch (an empty graph is a warning of its own)
            return eager(ph)
        return GRAPHS.run(be, model, ph, track, chunk, eager)

    return run
