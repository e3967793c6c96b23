"""Loading checkpoints by GLID's hand-off rules: every parameter is accounted for.

detectron2's checkpointer loads what fits and only warns about the rest, so a model whose
weights did not load can still be trained or evaluated. :class:`GLIDCheckpointer` decides
instead, by what is being loaded:

* **A checkpoint of this very model** (``--resume``, ``--eval-only``, the demo, any direct
  :meth:`~fvcore.common.checkpoint.Checkpointer.load`): every parameter and buffer must be in
  it with its shape, and nothing else may be.
* **Fine-tuning weights** (``MODEL.WEIGHTS`` at the start of training), by
  ``MODEL.GLID.WEIGHTS_SCOPE``:

  - ``"model"``, a GLID checkpoint (pre-training or another task): every parameter except the
    task's own (its linear ``head``, buffers of the ``task`` module, learnable query positions)
    must load with its shape. The head of another task (checkpoints record their
    ``MODEL.GLID.TASK``) is never loaded, even when its shape happens to fit.
  - ``"encoder"``, an encoder-only checkpoint (converted Swin / SimMIM, encoder-only MIM): every
    ``backbone.swin.*`` parameter must load; other encoder parameters load when present, the
    rest of the model starts from scratch and the checkpoint's non-encoder entries are ignored.

Anything else (a missing or mis-shaped parameter, an unknown entry) raises
:class:`CheckpointMismatchError` with the list of keys. What was newly initialized and what was
ignored is logged and kept in :attr:`GLIDCheckpointer.last_load`.

Saving is safe against divergence and interruption: weights with a NaN or infinity are never
written (FloatingPointError; the previous checkpoint stays the last one), and every file
(checkpoint and ``last_checkpoint``) is written to a temporary file in the same folder, flushed
to disk and renamed over its name, so a kill during a save leaves the previous checkpoint as
the last one and ``--resume`` never meets a partly written file.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

__all__ = ["CheckpointMismatchError", "GLIDCheckpointer", "LoadReport"]

logger = logging.getLogger(__name__)

SCOPES = ("model", "encoder")
# Parameters and buffers that belong to the task, not to the pre-trained model.
TASK_OWN_PREFIXES = ("head.", "task.", "queries.grid_points")
ENCODER_REQUIRED_PREFIX = "backbone.swin."


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model by the loading rules (see the module docstring)."""


@dataclass
class LoadReport:
    """What one load did: ``new`` (kept their initialization) and ``ignored`` (checkpoint
    entries not used) keys, sorted; ``exact`` for a load of this very model."""

    path: str
    exact: bool
    new: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _listing(title: str, keys) -> str:
    keys = sorted(keys)
    return f"{title} ({len(keys)}):\n  " + "\n  ".join(str(k) for k in keys)


def non_finite_entries(state_dict: dict) -> list[str]:
    """Keys of the floating-point tensors of ``state_dict`` holding a NaN or an infinity (one
    device synchronization when there are none)."""
    floats = [(k, v) for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()]
    flags = [torch.isfinite(v).all() for _, v in floats]
    if not flags or torch.stack([f.to(flags[0].device) for f in flags]).all():
        return []
    return [k for k, v in floats if not torch.isfinite(v).all()]


# Name of atomic_write's temporary file: ".<name>.tmp<pid>".
_TEMPORARY = re.compile(r"\..+\.tmp\d+")


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Writes ``path`` through ``write(file)`` so that it is either the old file or the
    complete new one: a temporary file in the same folder, fsync, ``os.replace``, fsync of the
    folder. The temporary file is removed if writing fails."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt / SystemExit: never leave the temp file
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unreadable(filename: str, error: Exception) -> CheckpointMismatchError:
    """Why ``filename`` could not be read, in words: a corrupt file is called corrupt, a
    well-formed file with foreign objects is not (torch's own message suggests weights_only=False
    for both)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
    foreign = re.search(r"Unsupported global: GLOBAL (\S+)", reason)
    if foreign:
        return CheckpointMismatchError(
            f"{filename} holds objects other than tensors and plain containers (a "
            f"{foreign.group(1)}), which the safe loader refuses; GLID's own checkpoints hold "
            "none. If you trust its source, save its state dict alone (a dict of tensors) and "
            "load that."
        )
    size = os.path.getsize(filename) if os.path.isfile(filename) else "?"
    return CheckpointMismatchError(
        f"{filename} is corrupt or truncated ({size} bytes), not a readable checkpoint: "
        f"{type(error).__name__}: {reason or 'unexpected end of file'}"
    )


class GLIDCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with GLID's loading rules and the task name in every save.

    Args:
        model: the GLID model (DDP-wrapped is fine).
        save_dir: where checkpoints are written and found for ``--resume``.
        task_name: ``MODEL.GLID.TASK``, saved as ``glid_task`` in every checkpoint.
        weights_scope: ``MODEL.GLID.WEIGHTS_SCOPE`` for fine-tuning weights.
        require_all: also :meth:`resume_or_load` requires every parameter (evaluation).
        checkpointables: optimizer, scheduler, ... as for detectron2's checkpointer.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        task_name: str,
        weights_scope: str = "model",
        require_all: bool = False,
        **checkpointables,
    ):
        if weights_scope not in SCOPES:
            raise ValueError(
                f"MODEL.GLID.WEIGHTS_SCOPE must be one of {SCOPES}, got {weights_scope!r}"
            )
        super().__init__(model, save_dir, **checkpointables)
        self.task_name = task_name
        self.weights_scope = weights_scope
        self.require_all = require_all
        self.last_load: LoadReport | None = None
        self._fine_tuning = False
        self._path = ""

    @classmethod
    def from_config(
        cls, cfg, model: nn.Module, save_dir: str = "", *, require_all: bool = False, **kwargs
    ) -> GLIDCheckpointer:
        """The checkpointer for ``cfg``'s task and ``MODEL.GLID.WEIGHTS_SCOPE``."""
        return cls(
            model,
            save_dir,
            task_name=cfg.MODEL.GLID.TASK,
            weights_scope=cfg.MODEL.GLID.WEIGHTS_SCOPE,
            require_all=require_all,
            **kwargs,
        )

    def save(self, name: str, **kwargs) -> None:
        """Writes ``<save_dir>/<name>.pth`` (model, checkpointables, ``glid_task`` and
        ``kwargs``) atomically, then names it in ``last_checkpoint`` (atomically too).
        ``save_dir`` is a local folder (detectron2's would also take other iopath URLs).

        Raises:
            FloatingPointError: if a weight of the model is NaN or infinite; nothing is
                written and ``last_checkpoint`` keeps naming the previous checkpoint.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        kwargs.setdefault("glid_task", self.task_name)
        data = {"model": self.model.state_dict()}
        bad = non_finite_entries(data["model"])
        if bad:
            raise FloatingPointError(
                f"not saving {name}.pth: the model's weights are not finite (diverged); "
                f"last_checkpoint still names {self._last_name() or 'no checkpoint'}.\n"
                + _listing("non-finite entries", bad[:20])
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        self._remove_stale_temporaries()
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Names ``last_filename_basename`` in ``save_dir/last_checkpoint``, atomically."""
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def _remove_stale_temporaries(self) -> None:
        """Removes the temporary files of saves that were killed (:func:`atomic_write`)."""
        for entry in os.listdir(self.save_dir):
            if _TEMPORARY.fullmatch(entry):
                self.logger.info(f"Removing {entry}, left by an interrupted save")
                os.remove(os.path.join(self.save_dir, entry))

    def _last_name(self) -> str:
        last = self.get_checkpoint_file()
        return os.path.basename(last) if last else ""

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        """The last checkpoint of ``save_dir`` (exact) when resuming and one exists, else
        ``path`` as fine-tuning weights (exact when ``require_all``)."""
        resuming = resume and self.has_checkpoint()
        self._fine_tuning = not self.require_all and not resuming
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._fine_tuning = False

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict:
        """Loads ``path`` by the rules above; an empty path starts from scratch only when
        loading fine-tuning weights (training), never for evaluation."""
        if not path and not self._fine_tuning:
            raise CheckpointMismatchError(
                "no weights to load: set MODEL.WEIGHTS (or --resume with a checkpoint in "
                f"{self.save_dir or 'OUTPUT_DIR'!r}); a model from scratch is never evaluated"
            )
        try:
            return super().load(path, checkpointables)
        finally:
            # detectron2 resets this only after a successful load; a failed one would make
            # every later load of this checkpointer fail its assertion.
            self._parsed_url_during_load = None

    def _load_file(self, filename: str) -> dict:
        self._path = filename
        try:
            return super()._load_file(filename)
        # What torch's (weights-only) unpickler raises on damaged bytes, or on a pickle that
        # holds objects other than tensors and containers.
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise _unreadable(filename, e) from e
        except RuntimeError as e:
            if "PytorchStreamReader" not in str(e):  # torch's reader of a damaged zip file
                raise
            raise _unreadable(filename, e) from e

    def _load_model(self, checkpoint: dict):
        exact = not self._fine_tuning
        ignored = [] if exact else self._drop_unused(checkpoint)
        incompatible = super()._load_model(checkpoint)
        misshaped = {key for key, *_ in incompatible.incorrect_shapes}
        missing = [k for k in incompatible.missing_keys if k not in misshaped]
        unexpected = incompatible.unexpected_keys
        problems = []
        if incompatible.incorrect_shapes:
            problems.append(
                _listing(
                    "mis-shaped (key, checkpoint shape, model shape)",
                    incompatible.incorrect_shapes,
                )
            )
        if exact:
            not_allowed = missing
        elif self.weights_scope == "model":
            not_allowed = [k for k in missing if not k.startswith(TASK_OWN_PREFIXES)]
        else:
            not_allowed = [k for k in missing if k.startswith(ENCODER_REQUIRED_PREFIX)]
        if not_allowed:
            problems.append(_listing("missing from the checkpoint", not_allowed))
        if unexpected:
            problems.append(_listing("in the checkpoint but not in the model", unexpected))
        if problems:
            what = (
                "a checkpoint of this model (resume / evaluation / demo)"
                if exact
                else f"fine-tuning weights with MODEL.GLID.WEIGHTS_SCOPE={self.weights_scope!r}"
            )
            raise CheckpointMismatchError(
                f"{self._path} does not fit the model, loaded as {what}:\n" + "\n".join(problems)
            )
        self.last_load = LoadReport(self._path, exact, sorted(missing), sorted(ignored))
        if missing:
            self.logger.info(_listing(f"Newly initialized, not in {self._path}", missing))
        if ignored:
            self.logger.info(_listing(f"Not used from {self._path}", ignored))
        return None  # reported above; fvcore would only warn

    def _drop_unused(self, checkpoint: dict) -> list[str]:
        """Fine-tuning: removes (and returns) the entries that are not to be loaded: another
        task's head, and with the encoder scope everything outside the encoder."""
        state = checkpoint["model"]
        same_task = checkpoint.get("glid_task") == self.task_name
        dropped = []
        for key in list(state):
            other_head = key.startswith("head.") and not same_task
            outside = self.weights_scope == "encoder" and not key.startswith("backbone.")
            if other_head or outside:
                dropped.append(key)
                del state[key]
        return dropped
