"""Trial records: what a sweep leaves for every later stage, and their one file format.

A sweep ends as a :class:`SweepRecords`: the resolved search space, one :class:`TrialRecord`
per trial (its searched values, final metrics, state, checkpoint), and where it was tracked.
The analysis and the report read these and nothing else; they never import Ray. The records
are written once, as JSON, next to the sweep (``records.json``) and on the sweep's MLflow
parent run, so ``lejepa-tune report`` can start from either.

Paths may be URIs (``s3://``, ``gs://``, ``file://``) or local paths; they are read and
written through ``pyarrow.fs``, as Ray Train reads and writes its storage.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import socket
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pyarrow.fs

from .metrics import DEVICE, OBJECTIVE_RESAMPLES, REFERENCE_CORRECT

__all__ = [
    "RECORDS_FILE",
    "TrialRecord",
    "SweepRecords",
    "filesystem",
    "join_uri",
    "read_text",
    "write_text",
    "read_records",
    "write_records",
    "short_name",
    "trial_label",
    "mask_uri",
    "unreachable",
]

RECORDS_FILE = "records.json"
STATUSES = ("completed", "stopped", "interrupted", "error")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the sweep ended it.

    ``status``: ``completed`` (all epochs), ``stopped`` (by the scheduler), ``interrupted`` (still
    running when the sweep was interrupted: ``lejepa-tune run --resume`` continues it) or ``error``.
    ``params``: the searched values, exactly as sampled. ``metrics``: the last reported
    numbers (``train/*``, ``labelfree/*``, ``eval/*``...). ``details``: the last reported
    non-numeric values (the reference probe's per-image results). ``checkpoint``: the URI of
    the final checkpoint in the sweep's storage. ``epochs``: how many epochs it reported.
    """

    trial_id: str
    status: str
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    details: Mapping[str, str] = field(default_factory=dict)
    checkpoint: str | None = None
    error: str | None = None
    epochs: int = 0
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown trial status {self.status!r} (known: {', '.join(STATUSES)})")

    @property
    def reference_correct(self) -> str | None:
        return self.details.get(REFERENCE_CORRECT)

    @property
    def objective_resamples(self) -> str | None:
        return self.details.get(OBJECTIVE_RESAMPLES)

    @property
    def device(self) -> str | None:
        """What trained it (``system/device``), when its reports said."""
        return self.details.get(DEVICE)


@dataclass(frozen=True)
class SweepRecords:
    """A finished sweep: its resolved space as data (``spec``, see
    :func:`lejepa_tune.search_space.spec_to_dict`), its trials in the order Tune created them,
    where it lives and where it was tracked. ``interrupted``: the sweep was stopped (Ctrl+C)
    before all its trials ended; ``lejepa-tune run --resume`` continues it."""

    name: str
    spec: Mapping[str, Any]
    trials: tuple[TrialRecord, ...]
    sweep_dir: str
    tracking_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None
    elapsed_s: float = math.nan
    interrupted: bool = False

    @property
    def searched(self) -> list[str]:
        """The searched keys (``"loss.lam"``, ...), in the order the space names them."""
        return list(self.spec.get("search", {}))

    def summary(self) -> str:
        """``"16 trials (2 completed, 14 stopped; 80 of their 256 epochs trained, 31%)"``: the
        trials by status, in the order of ``STATUSES``, and, where some trials did not train all
        their epochs (stopped, interrupted, failed), how many of those epochs were trained."""
        counts = [f"{sum(t.status == s for t in self.trials)} {s}" for s in STATUSES if any(t.status == s for t in self.trials)]
        trained, planned = self.epochs()
        if planned is not None and trained < planned:
            counts[-1] += f"; {trained} of their {planned} epochs trained, {trained / planned:.0%}"
        return f"{len(self.trials)} trial{'' if len(self.trials) == 1 else 's'}" + (f" ({', '.join(counts)})" if counts else "")

    def epochs(self) -> tuple[int, int | None]:
        """``(trained, planned)``: the epochs the trials trained, and those they would have
        trained had none been stopped (each trial's searched ``train.epochs``, or the base's);
        ``planned`` is ``None`` where the spec does not say."""
        default = (self.spec.get("base") or {}).get("train", {}).get("epochs")
        planned = [t.params.get("train.epochs", default) for t in self.trials]
        return sum(t.epochs for t in self.trials), (sum(planned) if all(isinstance(e, int) for e in planned) else None)

    def to_json(self) -> str:
        """The records as JSON; a password in the tracking URI is masked (files are shared)."""
        data = asdict(self)
        data["tracking_uri"] = mask_uri(self.tracking_uri) if self.tracking_uri else None
        data["trials"] = [asdict(t) for t in self.trials]
        return json.dumps(data, indent=1, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> SweepRecords:
        data = json.loads(text)
        trials = tuple(TrialRecord(**t) for t in data.pop("trials"))
        return cls(trials=trials, **data)


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """``(filesystem, path within it)`` for a URI or a local path (made absolute)."""
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    return pyarrow.fs.FileSystem.from_uri(uri)


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...`` for a URI (``s3://b/k`` + ``x`` -> ``s3://b/k/x``) or a local path."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return str(Path(base, *parts))


def read_text(uri: str) -> str:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None


def write_text(uri: str, text: str) -> None:
    """Writes ``text`` to ``uri`` whole: to a temporary name first, then renamed where the
    filesystem can rename (local), so a reader never sees half a file."""
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode("utf-8"))
    try:
        fs.move(tmp, path)
    except (NotImplementedError, OSError):  # object stores: a single put is already whole
        with fs.open_output_stream(path) as f:
            f.write(text.encode("utf-8"))
        fs.delete_file(tmp)


def write_records(records: SweepRecords, uri: str | None = None) -> str:
    """Writes ``records.json`` into the sweep directory (or to ``uri``); returns where."""
    target = uri or join_uri(records.sweep_dir, RECORDS_FILE)
    write_text(target, records.to_json())
    return target


def read_records(uri: str) -> SweepRecords:
    """Reads a sweep's records from its directory (or the ``records.json`` file itself)."""
    target = uri if uri.endswith(".json") else join_uri(uri, RECORDS_FILE)
    return SweepRecords.from_json(read_text(target))


def short_name(key: str) -> str:
    """``loss.lam`` -> ``lam``, ``model.backbone_kwargs.depth`` -> ``depth``: the last part of a
    searched key, for column headers and run names."""
    return key.rsplit(".", 1)[-1]


def _short(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return str(value)


def trial_label(params: Mapping[str, Any]) -> str:
    """``lam=0.0051 lr=0.002``: a trial named by its searched values (two significant digits)."""
    return " ".join(f"{short_name(k)}={_short(v)}" for k, v in params.items())


def unreachable(parts: urllib.parse.SplitResult, default_port: int, nobody: str = "nothing", timeout: float = 5.0) -> str | None:
    """Why nothing answers at the host and port of a split URL (``default_port`` where it names
    none): ``"nothing answers at HOST:PORT (Connection refused)"`` (``nobody`` names what was
    expected), or ``"not a valid port"``; ``None`` when something accepts a connection."""
    try:
        port = parts.port or default_port
    except ValueError:
        return "not a valid port"
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{nobody} answers at {parts.hostname}:{port} ({err.strerror or err})"
    return None


def mask_uri(uri: str) -> str:
    """The URI with any password (``scheme://user:secret@host``) replaced by ``***``: what may
    be printed, written or logged."""
    return re.sub(r"(://[^/:@]+:)[^/@]+@", r"\1***@", uri)
