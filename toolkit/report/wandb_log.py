"""Read one W&B run log (``run-<id>.wandb``) into a ``RunLog``: identity, config, summary, history, exit.

Why this exists: wandb 0.31 writes no ``wandb-summary.json`` or ``config.yaml`` for offline runs, and ships no Python
reader for its run log any more (the writer lives in the Go ``wandb-core`` binary). The log is the LevelDB log
format with a W&B file header, holding protobuf ``Record`` messages from ``wandb.proto.wandb_internal_pb2``:

* a 7-byte file header: ``b":W&B"``, magic ``0xBEE1`` (uint16 little-endian), version ``0`` (uint8);
* 32 KiB blocks (counted from the start of the file, header included) of chunks; a chunk is a 7-byte header
  (checksum uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last) and its data; fewer than 7 bytes
  left in a block, or a zero chunk header (the writer's preallocated tail), mean "skip to the next block";
* the checksum is CRC-32 (IEEE, what ``zlib.crc32`` computes) of the type byte followed by the data, unmasked. This
  is not LevelDB's masked CRC-32C: wandb kept the checksum of its earlier Python writer (checked on real logs).

A damaged log (bad header, checksum mismatch, truncated chunk) yields the records read before the damage, sets
``RunLog.damage`` and emits a ``LogDamageWarning``; it never raises. A log this reader cannot decode (another format
version, a record the installed protobuf schema does not parse, a wandb without that schema) is read through the
installed wandb's own reader instead (:mod:`toolkit.report.wandb_leet`), or refused with its reason.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.report import wandb_leet

try:
    from wandb.proto import wandb_internal_pb2 as pb
except ImportError:  # a wandb without the Python schema: every log is read through wandb leet inspect
    pb = None

FILE_HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
#: the wandb versions whose logs this reader is tested on (pyproject pins wandb to them)
TESTED_WANDB = "0.22-0.31"
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
#: zlib.crc32 seeds of the one-byte chunk types, so each chunk costs one crc32 call
_TYPE_CRC = {t: zlib.crc32(bytes([t])) for t in (FULL, FIRST, MIDDLE, LAST)}


class LogDamageWarning(UserWarning):
    """A run log is truncated or corrupt; the records before the damage were kept."""


class _Damage(Exception):
    """Internal: where and why the chunk stream stopped being readable."""

    def __init__(self, message: str, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


@dataclass
class RunLog:
    """What one run log says about its run.

    Attributes:
        path: the ``.wandb`` file.
        run_id: W&B run id ("" when the run record was not reached).
        group: W&B group (an ablation's name).
        job_type: W&B job type (an ablation's variant).
        tags: W&B tags.
        config: the run config as a nested dict (later config updates applied in order).
        summary: last value of each summary key; a ``define_metric(summary=...)`` key holds a dict such as
            ``{"max": 0.9}``.
        history: one dict per logged row, holding only the keys asked for (all when none were named).
        start_time: seconds since the epoch when the run started (0.0 when unknown).
        exit_code: the exit record's code, None when the log has no exit record (killed or still running).
        damage: why reading stopped early, None for a clean log.
        truncated: the damage is only a missing tail (how a killed writer leaves its log), not corruption.
        n_records: how many records were read.
    """

    path: Path
    run_id: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    start_time: float = 0.0
    exit_code: int | None = None
    damage: str | None = None
    truncated: bool = False
    n_records: int = 0

    @property
    def state(self) -> str:
        """``finished``, ``failed`` (non-zero exit), ``unfinished`` (no exit record) or ``corrupt``.

        A log that is only cut short keeps what its exit record says (none when the writer was killed); a log with
        a bad checksum or header is ``corrupt`` whatever it held.
        """
        if self.damage is not None and not self.truncated:
            return "corrupt"
        if self.exit_code is None:
            return "unfinished"
        return "finished" if self.exit_code == 0 else "failed"


def read_run_leet(path: Path, history_keys: Iterable[str] | None = None) -> RunLog:
    """The run log read by the installed wandb (``wandb leet inspect --json``, :mod:`toolkit.report.wandb_leet`).

    Raises:
        ToolkitError: wandb cannot read it either, or has no ``leet inspect --json`` (one line saying which).
    """
    return RunLog(**wandb_leet.read_run_leet(Path(path), history_keys))


def _chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (type, payload) of each chunk after the file header; raise ``_Damage`` where the stream breaks."""
    pos, end = len(FILE_HEADER), len(data)
    while pos < end:
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        if left < CHUNK_HEADER.size:
            pos += left
            continue
        if pos + CHUNK_HEADER.size > end:
            raise _Damage(f"log truncated at byte {pos}", truncated=True)
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0 and crc == 0:
            pos += left  # zero-filled rest of a block
            continue
        start = pos + CHUNK_HEADER.size
        if kind not in _TYPE_CRC or length > left - CHUNK_HEADER.size:
            raise _Damage(f"bad chunk header at byte {pos}")
        if start + length > end:
            raise _Damage(f"log truncated at byte {pos}", truncated=True)
        payload = data[start : start + length]
        if zlib.crc32(payload, _TYPE_CRC[kind]) != crc:
            raise _Damage(f"checksum mismatch at byte {pos}")
        yield kind, payload
        pos = start + length


def check_format(path: Path, header: bytes) -> None:
    """Refuse a W&B log written in a format version this reader does not know (a wandb outside the tested range).

    A whole header that starts like a W&B log but carries another magic or version is a format change, not damage:
    reading on would misparse it, so the report stops with one line instead of warning about "corrupt" logs.
    """
    if len(header) == len(FILE_HEADER) and header[:4] == FILE_HEADER[:4] and header != FILE_HEADER:
        magic, version = struct.unpack("<HB", header[4:])
        raise ToolkitError(
            f"{path} is a W&B run log of format {magic:#06x} version {version}, which this toolkit cannot read (it "
            f"reads the logs of wandb {TESTED_WANDB}); install a wandb in that range, or sync the runs (wandb sync) "
            "and report from the W&B API with --wandb ENTITY/PROJECT"
        )


def iter_records(path: Path, damage: list[Exception] | None = None) -> Iterator[Any]:
    """Yield the protobuf records of a run log in order, stopping quietly at the first damage.

    Args:
        path: a ``run-<id>.wandb`` file.
        damage: if given, the reason reading stopped early is appended to it (an exception whose ``truncated``
            attribute tells a log that just ends early, as a killed writer leaves it, from a corrupt one).
    """
    data = Path(path).read_bytes()
    check_format(path, data[: len(FILE_HEADER)])
    try:
        if data[: len(FILE_HEADER)] != FILE_HEADER:
            if FILE_HEADER.startswith(data):
                raise _Damage("log truncated inside the file header", truncated=True)
            raise _Damage("not a W&B run log (bad file header)")
        parts: list[bytes] = []
        for kind, payload in _chunks(data):
            if kind == FULL and not parts:
                blob = payload
            elif (kind == FIRST and not parts) or (kind == MIDDLE and parts):
                parts.append(payload)
                continue
            elif kind == LAST and parts:
                blob = b"".join([*parts, payload])
                parts.clear()
            else:
                raise _Damage(f"chunk of type {kind} out of order")
            record = pb.Record()
            try:
                record.ParseFromString(blob)
            except Exception as err:  # protobuf raises its own DecodeError type per backend
                raise _Damage(f"record does not parse ({err})") from err
            yield record
        if parts:
            raise _Damage("log truncated inside a record", truncated=True)
    except _Damage as err:
        if damage is not None:
            damage.append(err)


def _item_key(item: Any) -> str:
    """The flat key of a config/summary/history item (``nested_key`` parts joined with ``.``)."""
    return item.key or ".".join(item.nested_key)


def _item_value(item: Any) -> Any:
    """The decoded value of a history item, which carries either ``value_json`` or one typed field."""
    if item.value_json:
        return json.loads(item.value_json)
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    value = getattr(item, kind)
    return json.loads(value) if kind == "json" else value


def _apply_config(config: dict[str, Any], record: Any) -> None:
    """Apply a ``ConfigRecord`` (updates then removals) to a nested config dict."""
    for item in record.update:
        path = list(item.nested_key) or [item.key]
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    for item in record.remove:
        path = list(item.nested_key) or [item.key]
        node = config
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)


def read_run(path: Path, history_keys: Iterable[str] | None = None) -> RunLog:
    """Read a run log into a ``RunLog``; a damaged log gives what precedes the damage and a ``LogDamageWarning``.

    A log this reader cannot decode is read through ``wandb leet inspect --json`` (see the module docstring).

    Args:
        path: a ``run-<id>.wandb`` file.
        history_keys: history keys to keep (others are skipped undecoded, which keeps large sweeps fast);
            None keeps every key.

    Raises:
        ToolkitError: neither this reader nor wandb's can decode the log (both reasons).
    """
    if pb is None:
        return read_run_leet(Path(path), history_keys)
    try:
        run = _read_run(path, history_keys)
    except ToolkitError as refused:  # a format this reader does not know: the installed wandb may
        try:
            return read_run_leet(Path(path), history_keys)
        except ToolkitError as err:
            raise ToolkitError(f"{refused}; {err}") from None
    if run.damage is not None and run.damage.startswith("record does not parse"):
        try:  # a schema newer than this reader's protobuf: wandb's own reader knows it
            other = read_run_leet(Path(path), history_keys)
        except ToolkitError:
            other = None
        if other is not None and other.damage is None:
            return other
    if run.damage is not None:
        warnings.warn(
            f"{run.path}: {run.damage}; kept the {run.n_records} records before it", LogDamageWarning, stacklevel=2
        )
    return run


def _read_run(path: Path, history_keys: Iterable[str] | None) -> RunLog:
    run = RunLog(path=Path(path))
    wanted = None if history_keys is None else set(history_keys)
    summary_json: dict[str, str] = {}  # decoded once at the end: most summary updates are overwritten
    damage: list[Exception] = []
    for record in iter_records(run.path, damage):
        run.n_records += 1
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in record.history.item:
                key = _item_key(item)
                if wanted is None or key in wanted:
                    row[key] = _item_value(item)
            if row:
                run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                summary_json[_item_key(item)] = item.value_json
            for item in record.summary.remove:
                summary_json.pop(_item_key(item), None)
        elif kind == "config":
            _apply_config(run.config, record.config)
        elif kind == "run":
            rr = record.run
            run.run_id, run.group, run.job_type, run.tags = rr.run_id, rr.run_group, rr.job_type, list(rr.tags)
            run.start_time = rr.start_time.seconds + rr.start_time.nanos * 1e-9
            _apply_config(run.config, rr.config)
            for item in rr.summary.update:
                summary_json[_item_key(item)] = item.value_json
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.summary = {key: json.loads(value) for key, value in summary_json.items() if value}
    if damage:
        run.damage, run.truncated = str(damage[0]), bool(getattr(damage[0], "truncated", False))
    return run
