"""Models from files, and models as data (SPEC 11).

:func:`load_model` takes what a ``--model`` flag takes: a registered name (``mmk``,
``ecoli``), a Python file that defines ``MODEL``, an SBML file (``.xml``/``.sbml``) or a
PEtab problem (``.yaml``/``.yml``). A model from a file carries its :class:`ModelSource`:
the files' contents and their content hash. The source, not the path, is what travels:
a model pickles as its source (see ``Model.__reduce_ex__``), and a dataset manifest or a
checkpoint stores it (:func:`source_record`), so a Ray worker on another node, a Serve
replica or ``load_estimator`` rebuilds exactly the same model after the user's file is
gone (:func:`model_from_record`).

Rebuilding writes the files once into ``$MECHINFER_CACHE/models/<hash>/`` (default
``~/.cache/mechinfer/models``; written into a temporary folder, then renamed, so no
process ever sees half of one) and loads the model from there. A Python file is imported
under a module name derived from its hash: two files of the same name never collide,
and the native solver's code cache (keyed by the rate function's source) finds its code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import posixpath
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import priors as priors_module
from .base import Model
from .odesystem import ModelSourceError

KINDS = ("builtin", "python", "sbml", "petab")
SUFFIXES = {".py": "python", ".xml": "sbml", ".sbml": "sbml", ".yaml": "petab", ".yml": "petab"}
# the files a PEtab v1 problem names: at the top of its YAML, and in each of its problems.
# Its visualization_files travel where they exist and may be missing: plot specifications
# change no number (load_petab skips them), and a YAML may name one never published
_PETAB_TOP = ("parameter_file",)
_PETAB_PROBLEM = ("sbml_files", "condition_files", "measurement_files", "observable_files", "visualization_files")
_PETAB_OPTIONAL = ("visualization_files",)
_MODULE_PREFIX = "mechinfer_user_model_"


@dataclass(frozen=True)
class ModelSource:
    """What a model from a file is made of: its ``kind`` (builtin, python, sbml, petab),
    the ``entry`` file's name, the ``files`` ({relative name: text}) and their content
    ``hash`` (sha256 of the kind, the entry and the sorted (name, content) pairs). A
    built-in model's source names it (``entry``) and holds no files."""

    kind: str
    entry: str
    files: dict[str, str] = field(default_factory=dict)
    hash: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelSourceError(f"unknown model source kind {self.kind!r}; one of {', '.join(KINDS)}")
        digest = content_hash(self.kind, self.entry, self.files)
        if self.hash and self.hash != digest:
            raise ModelSourceError(
                f"model source {self.entry!r}: its files do not match its hash {self.hash[:12]} (got {digest[:12]})"
            )
        object.__setattr__(self, "hash", digest)

    def __hash__(self) -> int:
        return hash(self.hash)

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> ModelSource:
        """Read a model file (and, for PEtab, every file its YAML names)."""
        p = Path(path).expanduser()
        kind = SUFFIXES.get(p.suffix.lower())
        if kind is None:
            raise ModelSourceError(
                f"model file {str(path)!r} has an unknown extension {p.suffix!r}: "
                "expected .py (Python), .xml or .sbml (SBML), .yaml or .yml (PEtab)"
            )
        if not p.is_file():
            raise ModelSourceError(f"model file {str(path)!r} does not exist")
        p = p.resolve()
        if kind != "petab":
            return cls(kind, p.name, {p.name: _read(p)})
        entry_text = _read(p)
        paths = [p]
        for name, optional in _petab_files(entry_text, str(path)).items():
            f = p.parent / name
            if f.is_file():
                paths.append(f)
            elif not optional:
                raise ModelSourceError(f"PEtab problem {str(path)!r} names {f.name!r}, which does not exist ({f})")
        # names relative to the folder that holds them all, so '../model.xml' keeps its layout
        root = Path(os.path.commonpath([str(f.resolve().parent) for f in paths]))
        files = {f.resolve().relative_to(root).as_posix(): _read(f) for f in paths}
        return cls("petab", p.relative_to(root).as_posix(), files)

    @classmethod
    def builtin(cls, name: str) -> ModelSource:
        return cls("builtin", name)

    def record(self) -> dict:
        """The JSON form stored in manifests and checkpoints (:meth:`from_record` reads it)."""
        return {"kind": self.kind, "entry": self.entry, "hash": self.hash, "files": dict(self.files)}

    @classmethod
    def from_record(cls, record: dict) -> ModelSource:
        try:
            return cls(record["kind"], record["entry"], dict(record.get("files") or {}), record.get("hash") or "")
        except (KeyError, TypeError) as exc:
            raise ModelSourceError(f"malformed model source record: {exc}") from None

    def load(self) -> Model:
        """The model, rebuilt from the contents alone (no access to the original path);
        once per process and hash."""
        if self.hash not in _LOADED:
            if self.kind == "builtin":
                from . import get_model

                _LOADED[self.hash] = get_model(self.entry)
            else:
                _LOADED[self.hash] = _build(self, materialize(self))
        return _LOADED[self.hash]


_LOADED: dict[str, Model] = {}


def content_hash(kind: str, entry: str, files: dict[str, str]) -> str:
    """sha256 of the kind, the entry and the sorted (name, content) pairs; for a built-in
    model (no files) of its name and the spec version."""
    if kind == "builtin":
        from .. import SPEC_VERSION

        text = json.dumps(["builtin", entry, SPEC_VERSION])
    else:
        text = json.dumps([kind, entry, sorted(files.items())])
    return hashlib.sha256(text.encode()).hexdigest()


def builtin_hash(name: str) -> str:
    if name not in _BUILTIN_HASHES:
        _BUILTIN_HASHES[name] = content_hash("builtin", name, {})
    return _BUILTIN_HASHES[name]


_BUILTIN_HASHES: dict[str, str] = {}


def cache_root() -> Path:
    """``$MECHINFER_CACHE/models`` (default ~/.cache/mechinfer/models), or a folder in the
    temporary directory where that cannot be written."""
    root = os.environ.get("MECHINFER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mechinfer")
    path = Path(root) / "models"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    path = Path(tempfile.gettempdir()) / f"mechinfer-models-{getattr(os, 'getuid', lambda: 0)()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def materialize(source: ModelSource) -> Path:
    """The folder ``<cache>/models/<hash>/`` holding the source's files (written once:
    into a temporary folder beside it, renamed into place; a folder whose files differ
    from the source is replaced)."""
    root = cache_root()
    final = root / source.hash
    if final.is_dir() and _holds(final, source.files):
        return final
    tmp = root / f"_tmp-{uuid.uuid4().hex}"
    try:
        for name, text in source.files.items():
            target = tmp / _safe_name(name, source.entry)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        if final.exists():  # a damaged copy: moved aside (one rename), then deleted
            old = root / f"_old-{uuid.uuid4().hex}"
            try:
                os.rename(final, old)
            except OSError:
                pass
            else:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its copy first
            if not (final.is_dir() and _holds(final, source.files)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _holds(folder: Path, files: dict[str, str]) -> bool:
    try:
        return all((folder / name).read_text(encoding="utf-8") == text for name, text in files.items())
    except (OSError, UnicodeDecodeError):
        return False


def _safe_name(name: str, entry: str) -> str:
    norm = posixpath.normpath(name)
    if norm.startswith(("/", "../")) or norm == ".." or "\\" in name:
        raise ModelSourceError(f"model source {entry!r} holds a file outside its folder: {name!r}")
    return norm


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelSourceError(f"model file {str(path)!r} is not UTF-8 text") from None
    except OSError as exc:
        raise ModelSourceError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from None


def _petab_files(text: str, where: str) -> dict[str, bool]:
    """The relative names of the files a PEtab v1 YAML names, in order, each once, each
    with whether it may be missing (:data:`_PETAB_OPTIONAL`)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(f"PEtab problem {where!r} is not valid YAML: {first}") from None
    if not isinstance(doc, dict):
        raise ModelSourceError(f"PEtab problem {where!r} is not a PEtab YAML mapping")
    names: dict[str, bool] = {}

    def add(value, optional: bool) -> None:
        for v in [value] if isinstance(value, str) else (value or []):
            if isinstance(v, str):
                names[v] = names.get(v, True) and optional  # named anywhere as required: required

    for key in _PETAB_TOP:
        add(doc.get(key), False)
    for problem in doc.get("problems") or []:
        if isinstance(problem, dict):
            for key in _PETAB_PROBLEM:
                add(problem.get(key), key in _PETAB_OPTIONAL)
    return names


def _build(source: ModelSource, folder: Path) -> Model:
    path = folder / source.entry
    if source.kind == "python":
        model = _import_python(source, path)
    elif source.kind == "sbml":
        try:
            from .sbml_model import model_from_sbml  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ModelSourceError(f"{source.entry}: SBML models are not supported by this build ({exc})") from None
        model = model_from_sbml(str(path))
    else:
        try:
            from .petab import load_petab  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ModelSourceError(f"{source.entry}: PEtab problems are not supported by this build ({exc})") from None
        problem = load_petab(str(path))
        model = problem.model
    if not isinstance(model, Model):
        raise ModelSourceError(f"{source.entry}: did not give a mechinfer Model (got {type(model).__name__})")
    from . import list_models

    if model.name in list_models():
        raise ModelSourceError(
            f"{source.entry}: defines a model named {model.name!r}, the name of a built-in model; give it another name"
        )
    model = replace(model, source=source)
    if source.kind == "petab":
        problem.model = model
        _PROBLEMS[source.hash] = problem
    return model


_PROBLEMS: dict[str, Any] = {}


def petab_problem(model: Model):
    """The PEtab problem (:class:`mechinfer.models.petab.PetabProblem`) a model was loaded
    from (``load_model`` of a .yaml file, or a model rebuilt from a dataset's or checkpoint's
    copy of it), its measurements and exact log-likelihood included; once per process.
    ValueError for a model of another kind."""
    source = model.source
    if source is None or source.kind != "petab":
        raise ValueError(f"{model.name} is not the model of a PEtab problem")
    if source.hash not in _PROBLEMS:
        _build(source, materialize(source))  # builds the problem, and the model it holds
    return _PROBLEMS[source.hash]


def _import_python(source: ModelSource, path: Path) -> Model:
    name = _MODULE_PREFIX + source.hash[:16]
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ModelSourceError(f"{source.entry}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: dataclasses and pickling look modules up there
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            del sys.modules[name]
            message = " ".join(str(exc).split()) or "(no message)"
            raise ModelSourceError(f"{source.entry}: importing it raised {type(exc).__name__}: {message}") from None
    model = getattr(module, "MODEL", None)
    if model is None:
        raise ModelSourceError(f"{source.entry}: defines no MODEL (a mechinfer.Model)")
    if not isinstance(model, Model):
        raise ModelSourceError(f"{source.entry}: MODEL is of type {type(model).__name__}, not a mechinfer.Model")
    return model


def is_model_file(text: str) -> bool:
    """Whether a ``--model`` value names a file rather than a registered model."""
    from . import _MODULES

    if text in _MODULES:
        return False
    return os.path.splitext(text)[1].lower() in SUFFIXES or os.sep in text or "/" in text or os.path.exists(text)


def load_model(source: str | os.PathLike | Model | ModelSource) -> Model:
    """The model that ``source`` names: a registered name (``mmk``, ``ecoli``), a Python
    file defining ``MODEL``, an SBML file (``.xml``/``.sbml``) or a PEtab problem
    (``.yaml``/``.yml``); a :class:`Model` or a :class:`ModelSource` as it is. Raises
    :class:`ModelSourceError` naming the problem."""
    from . import _MODULES, get_model

    if isinstance(source, Model):
        return source
    if isinstance(source, ModelSource):
        return source.load()
    text = os.fspath(source)
    if text in _MODULES:
        return get_model(text)
    if is_model_file(text):
        source = ModelSource.from_path(text)
        try:
            return source.load()
        except ValueError as exc:  # ModelSourceError, UnsupportedModelError: name the user's file, not the cache
            original = Path(text).expanduser().resolve()
            root = original.parents[len(Path(source.entry).parts) - 1]
            raise type(exc)(str(exc).replace(str(materialize(source)), str(root))) from None
    raise ModelSourceError(
        f"unknown model {text!r}: give a registered name ({', '.join(_MODULES)}) or a model file "
        "(.py, .xml/.sbml, .yaml/.yml)"
    )


# ------------------------------------------------------------ manifests and checkpoints
def source_of(model: Model) -> ModelSource:
    """The model's source; a built-in model's names it."""
    return model.source if model.source is not None else ModelSource.builtin(model.name)


def source_record(model: Model) -> dict:
    """What a dataset manifest and a checkpoint store about their model: ``model`` (the
    name), ``model_hash``, ``model_source`` (kind, entry, hash, files) and ``priors``
    (each parameter's, as it describes itself: the z every row and network speaks is
    the priors' map)."""
    src = source_of(model)
    return {"model": model.name, "model_hash": src.hash, "model_source": src.record(), "priors": _priors(model)}


def _priors(model: Model) -> list[str]:
    """Each parameter's prior as it describes itself: what a record stores and is checked
    against."""
    return [q.prior.describe() for q in model.quantities]


def recorded_hash(meta: dict) -> str:
    """The model hash a manifest or checkpoint records; one written before model hashes
    existed is of the built-in model it names."""
    return meta.get("model_hash") or builtin_hash(str(meta.get("model")))


def model_from_record(meta: dict) -> Model:
    """The model a dataset manifest or a checkpoint was made with, from its stored copy
    (a built-in model by name where it stores none)."""
    record = meta.get("model_source")
    if record:
        source = ModelSource.from_record(record)
        if meta.get("model_hash") and meta["model_hash"] != source.hash:
            raise ModelSourceError(
                f"model source of {meta.get('model')!r} does not match its recorded hash {meta['model_hash'][:12]}"
            )
        return source.load()
    from . import get_model

    return get_model(str(meta.get("model")))


def check_model(model: Model, meta: dict, what: str) -> None:
    """Refuse ``meta`` (a manifest or checkpoint; ``what`` names it) made with another
    model than ``model`` (name or content hash), in one line naming both."""
    recorded = recorded_hash(meta)
    if meta.get("model") != model.name:
        raise ValueError(f"{what} is for {meta.get('model')!r}, not {model.name!r}")
    if recorded != model.source_hash:  # same name, another version of its file
        raise ValueError(
            f"{what} is for model {meta.get('model')!r} (hash {recorded[:12]}), "
            f"not {model.name!r} (hash {model.source_hash[:12]})"
        )
    # The same files read with other priors (a PEtab objectivePriorType read since): its
    # z is another map. One recorded before priors were recorded read them all as uniform
    # or log-uniform, as this code still does unless a table gives an objective prior.
    priors = _priors(model)
    if "priors" in meta and list(meta["priors"]) != priors:
        if len(meta["priors"]) != len(priors):  # not from this code: it records one per parameter
            raise ValueError(
                f"{what} records {len(meta['priors'])} priors; {model.name!r} has {len(priors)} parameters"
            )
        name, was, now = next((q.name, a, b) for q, a, b in zip(model.quantities, meta["priors"], priors) if a != b)
        raise ValueError(f"{what} was made with {name} ~ {was}; the model now reads {now}: make it again")
    if "priors" not in meta and not priors_module.is_affine(model.priors):
        raise ValueError(
            f"{what} predates the objective priors of {model.name!r} "
            "(it drew them uniform on their scale); make it again"
        )
