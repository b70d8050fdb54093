"""Restricted unpickler for legacy checkpoints: rebuilds tensors, numpy arrays and plain containers, runs nothing else.

``torch.load(weights_only=True)`` refuses any pickle that mentions a class outside its allowlist, which includes
legitimate old files: Lightning 1.x checkpoints (OmegaConf ``DictConfig`` or ``AttributeDict`` in their
hyper-parameters, callback classes as dict keys), mmcv/mmpose ``.pth`` metadata, Stable Diffusion ``.ckpt`` files.
``pickle`` itself runs whatever callable a file names. This module sits in between (used as ``torch.load``'s
``pickle_module``):

- globals on the allowlist (torch's own weights-only allowlist, torch's registered safe globals, builtin scalar and
  container types, ``collections`` containers, numpy's array/dtype/scalar reconstructors, ``pathlib`` paths,
  ``datetime`` values) are the real objects;
- any other global becomes an inert placeholder *type* (nothing is imported). Such a type may be referenced (e.g.
  a dict key) and may be instantiated the way pickle rebuilds plain objects (``NEWOBJ`` = ``cls.__new__`` then
  ``BUILD`` / ``SETITEMS`` / ``APPENDS``): the placeholder only records what the pickle gives it and runs no code of
  the class. Calling it (``REDUCE``, i.e. ``f(*args)``: how a ``__reduce__`` payload runs ``os.system``, ``exec``
  ...) raises ``UnsafePickleError`` naming the global.

A caller then checks that no placeholder ended up in what it needs (``find_unloaded``): placeholders are fine in
metadata nobody reads, never inside a state dict.
"""

from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import datetime
import pathlib
import pickle
import struct
import types
from collections.abc import Iterator
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked to call a global that the restricted unpickler does not run; ``name`` = ``module.name``."""

    def __init__(self, name: str, what: str = "calls") -> None:
        self.name = name
        verb = "run" if what == "calls" else "allow"
        super().__init__(f"the pickle {what} {name}, which the safe loader does not {verb}")


class _UnloadedMeta(type):
    """Metaclass of placeholder types: calling one (pickle ``REDUCE``) is refused."""

    _qualified: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(cls._qualified)

    def __repr__(cls) -> str:
        return f"<unloaded class {cls._qualified}>"


class Unloaded(metaclass=_UnloadedMeta):
    """An object of a class the safe loader did not rebuild; it keeps the pickled data and has no behaviour."""

    _qualified = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Unloaded:
        obj = object.__new__(cls)
        obj.__dict__.update(pickle_args=args, pickle_kwargs=kwargs, pickle_state=None, pickle_items={}, pickle_list=[])
        return obj

    def __setstate__(self, state: Any) -> None:
        self.__dict__["pickle_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["pickle_items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["pickle_list"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["pickle_list"].extend(values)

    def __repr__(self) -> str:
        return f"<unloaded {type(self)._qualified} object>"


_PLACEHOLDERS: dict[str, type] = {}


def placeholder(qualified: str) -> type:
    """The placeholder type for ``module.name`` (one per name, so it can serve as a dict key consistently)."""
    if qualified not in _PLACEHOLDERS:
        _PLACEHOLDERS[qualified] = _UnloadedMeta(
            qualified.rsplit(".", 1)[-1], (Unloaded,), {"_qualified": qualified, "__module__": __name__}
        )
    return _PLACEHOLDERS[qualified]


def _is_placeholder(obj: Any) -> bool:
    return isinstance(obj, (_UnloadedMeta, Unloaded))


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects) without running an unknown class's code."""
    if isinstance(cls, _UnloadedMeta):
        return cls.__new__(cls) if state is None else cls.__new__(cls, state)
    if cls in _SAFE_TYPES and base in _SAFE_TYPES | {object}:
        return copyreg._reconstructor(cls, base, state)
    raise UnsafePickleError(f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}")


def _safe_newobj(cls: Any, *args: Any) -> Any:
    """``copyreg.__newobj__`` (``cls.__new__(cls, *args)``) for placeholders and allowlisted types only."""
    if isinstance(cls, _UnloadedMeta) or cls in _SAFE_TYPES:
        return cls.__new__(cls, *args)
    raise UnsafePickleError(f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}")


_SAFE_TYPES: set[type] = {
    int,
    float,
    complex,
    bool,
    str,
    bytes,
    bytearray,
    dict,
    list,
    tuple,
    set,
    frozenset,
    slice,
    range,
    collections.OrderedDict,
    collections.defaultdict,  # constructing one never calls its factory (a placeholder factory refuses later)
    collections.Counter,
    collections.deque,
}


def _numpy_multiarray() -> Any:
    core = getattr(np, "_core", None) or np.core
    return core.multiarray


def _allowed_globals() -> dict[str, Any]:
    import torch
    from torch import _weights_only_unpickler

    allowed: dict[str, Any] = {}
    allowed.update(_weights_only_unpickler._get_allowed_globals())
    for obj in torch.serialization.get_safe_globals():
        target = obj[0] if isinstance(obj, tuple) else obj
        name = obj[1] if isinstance(obj, tuple) else f"{target.__module__}.{target.__qualname__}"
        allowed[name] = target
    for t in _SAFE_TYPES:
        allowed[f"{t.__module__}.{t.__qualname__}"] = t
    allowed["builtins.object"] = object
    allowed["copyreg._reconstructor"] = _safe_reconstructor
    allowed["copyreg.__newobj__"] = _safe_newobj
    multiarray = _numpy_multiarray()
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}._reconstruct"] = multiarray._reconstruct
        allowed[f"{module}.scalar"] = multiarray.scalar
    allowed["numpy.ndarray"] = np.ndarray
    allowed["numpy.dtype"] = np.dtype
    for name in getattr(np, "dtypes", None) and dir(np.dtypes) or []:
        if name.endswith("DType"):
            allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    # constructing these touches no file system and runs no user code
    for module in ("pathlib", "pathlib._local"):
        allowed[f"{module}.PurePosixPath"] = allowed[f"{module}.PosixPath"] = pathlib.PurePosixPath
        allowed[f"{module}.PureWindowsPath"] = allowed[f"{module}.WindowsPath"] = pathlib.PureWindowsPath
        allowed[f"{module}.Path"] = allowed[f"{module}.PurePath"] = pathlib.PurePath
    for t in (datetime.date, datetime.datetime, datetime.time, datetime.timedelta, datetime.timezone):
        allowed[f"datetime.{t.__name__}"] = t
    return allowed


class RestrictedUnpickler(pickle._Unpickler):
    """Unpickler whose ``find_class`` returns allowlisted objects or inert placeholder types.

    Built on pickle's pure-Python unpickler (only the metadata is pickled; tensor data lives in separate storages)
    so that ``BUILD`` can be restricted too: it may set the state of an object the pickle created, never attributes
    of a class or function (which would change the real, allowlisted class for the whole process).
    """

    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = _allowed_globals()

    def load(self) -> Any:
        try:
            return super().load()
        except (pickle.UnpicklingError, EOFError):
            raise
        except (KeyError, IndexError, TypeError, AttributeError, ValueError, struct.error) as err:
            # the Python unpickler reports a corrupt stream (unknown opcode, empty stack) with these
            raise pickle.UnpicklingError(f"corrupt or unsupported pickle data: {type(err).__name__}: {err}") from err

    def load_build(self) -> None:
        inst = self.stack[-2]
        if isinstance(inst, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)):
            name = getattr(inst, "_qualified", None) or f"{inst.__module__}.{getattr(inst, '__qualname__', inst)}"
            raise UnsafePickleError(name, what="sets attributes of")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 files written by Python 2
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in self._allowed:
            return self._allowed[qualified]
        return placeholder(qualified)


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError
    __name__ = "grpose.safe_pickle"

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


pickle_module = _PickleModule()


def find_unloaded(obj: Any, path: str = "") -> tuple[str, str] | None:
    """First placeholder inside ``obj`` (dicts, lists, tuples, sets; keys and values): ``(path, 'module.name')``."""
    for where, item in _walk(obj, path, set()):
        if _is_placeholder(item):
            name = item._qualified if isinstance(item, _UnloadedMeta) else type(item)._qualified
            return where or "<top level>", name
    return None


def _walk(obj: Any, path: str, seen: set[int]) -> Iterator[tuple[str, Any]]:
    yield path, obj
    if id(obj) in seen or _is_placeholder(obj):
        return
    if isinstance(obj, dict):
        seen.add(id(obj))
        for key, value in obj.items():
            yield from _walk(key, f"{path}[{key!r}] (key)", seen)
            yield from _walk(value, f"{path}[{key!r}]", seen)
    elif isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
        seen.add(id(obj))
        for i, value in enumerate(obj):
            yield from _walk(value, f"{path}[{i}]", seen)
