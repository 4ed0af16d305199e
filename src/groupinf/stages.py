"""Stages of a resumable run, each keyed by the settings and inputs it depends on.

A stage writes its ``files`` (files or directories) under the run directory; it is done when its ``done``
file exists (written last, by rename), or, for a stage without one, when its computation finds nothing left
to do. Before a stage first runs, its settings are recorded in ``DIR/stages/<name>.json``. A later run
reuses a stage only when the recorded settings equal the current ones. Otherwise the stage is *stale*:
``Stages.check`` then raises a ``StaleStagesError`` naming the settings that differ, or, with
``recompute``, deletes the stage's files so that it is computed again while every other stage is kept.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groupinf.files import atomic_write_json

#: what ``stale`` reports for a stage whose files exist without a settings record
UNRECORDED = "files without a settings record (made by an older groupinf?)"


@dataclass(frozen=True)
class Stage:
    """One stage: its name (a relative path, e.g. ``finetune/less/math/seed3``), the settings and input
    digests its result depends on (JSON values), the files it writes and the file written last."""

    name: str
    settings: dict[str, Any]
    files: tuple[Path, ...]
    done: Path | None = None


class StaleStagesError(ValueError):
    """Stages of a run directory were computed with other settings than the current ones."""


def _flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b": value}`` (other values are leaves)."""
    if not isinstance(settings, dict) or not settings:
        return {prefix: settings}
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        flat |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def differences(saved: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (saved value, wanted value)}`` for every setting that differs (``None`` when absent)."""
    old, new = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(wanted)))
    return {
        key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)
    }


class Stages:
    """The stages of the run directory ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path, recompute: bool = False) -> None:
        self.root, self.recompute = Path(root), recompute

    def record(self, stage: Stage) -> Path:
        return self.root / "stages" / f"{stage.name}.json"

    def stale(self, stage: Stage) -> dict[str, tuple[Any, Any]] | None:
        """How the recorded settings differ from the stage's, or None when its files may be reused (they match,
        or there are no files yet)."""
        if not any(path.exists() for path in stage.files):
            return None
        record = self.record(stage)
        if not record.is_file():
            return {UNRECORDED: (None, None)}
        return differences(json.loads(record.read_text()), stage.settings) or None

    def check(self, stages: Iterable[Stage]) -> None:
        """Raise ``StaleStagesError`` naming the differing settings of every stale stage, or with ``recompute``
        delete the stale stages' files and records (the other stages are kept)."""
        stale = {stage.name: (stage, diff) for stage in stages if (diff := self.stale(stage)) is not None}
        if not stale:
            return
        if self.recompute:
            for stage, _ in stale.values():
                for path in stage.files:
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                self.record(stage).unlink(missing_ok=True)
            return
        changed: dict[str, tuple[Any, Any]] = {}
        for _, diff in stale.values():
            changed = diff | changed
        described = ", ".join(
            key if key == UNRECORDED else f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items()
        )
        kinds: dict[str, int] = {}
        for name in stale:
            kinds[name.split("/")[0]] = kinds.get(name.split("/")[0], 0) + 1
        names = ", ".join(kind if count == 1 else f"{kind} ({count})" for kind, count in kinds.items())
        raise StaleStagesError(
            f"{self.root} was computed with other settings: {described}; stale stages: {names}. Rerun with "
            "--recompute to recompute them (the other stages are kept), or choose another --out"
        )

    def run(self, stage: Stage, compute: Callable[..., object], *args: Any) -> None:
        """``compute(*args)`` unless the stage is done with the same settings (``check`` first; the settings are
        recorded before ``compute`` runs, so a resumed computation is recognised as the same stage)."""
        self.check([stage])
        if stage.done is not None and stage.done.exists():
            return
        record = self.record(stage)
        if not record.is_file() or differences(json.loads(record.read_text()), stage.settings):
            atomic_write_json(record, stage.settings)
        compute(*args)
