"""Where a command's run lives and which run it continues: the run folder, ``--ckpt_path last``, the W&B run.

A fit writes into ``<default_root_dir>`` (``checkpoints/``, ``result.json``, ``wandb/``) and never into a folder that
holds another run; ``last`` means ``<checkpoint dir>/last.ckpt``; an ablation run is named in W&B by its ablation,
variant and seed; a resumed fit continues the W&B run its checkpoint names (online) or records it (offline).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from toolkit._moved import flat_path
from toolkit.errors import ToolkitError
from toolkit.lightning_cli.checkpoint import CheckpointReaders
from toolkit.lightning_cli.tracking import check_init_kwargs
from toolkit.study.layout import CHECKPOINTS, LAST_CHECKPOINT, RESULT_FILE

#: the subcommands that evaluate a checkpoint
EVAL_COMMANDS = ("validate", "test", "predict")


def _not_a_file(path: str) -> str:
    """Why ``path`` is no checkpoint file: it is missing, a folder, or another kind of file (``/dev/null``)."""
    if Path(path).is_dir():
        return "is a folder, not a checkpoint file"
    if Path(path).exists():
        return "is not a regular file"
    return "does not exist"


def check_writable(root: Path) -> None:
    """A run folder this process cannot write (read-only, forbidden) is an ``OSError`` naming it now (the CLI's one
    line, exit 2), not an error the W&B logger raises inside LightningCLI's instantiation. Nothing is left behind:
    a folder that does not exist yet is probed by a scratch folder in its nearest existing parent."""
    existing = next((p for p in (root, *root.parents) if p.exists()), Path("."))
    try:
        if existing == root:
            with tempfile.TemporaryFile(dir=root):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(root)) from err


def set_checkpoint_dirs(config: Any, root: Path) -> None:
    """Both checkpoint callbacks write into ``<root>/checkpoints`` unless told otherwise; they never both write last."""
    if config.checkpoint.dirpath is None:
        config.checkpoint.dirpath = str(root / CHECKPOINTS)
    if config.last_checkpoint.dirpath is None:
        config.last_checkpoint.dirpath = config.checkpoint.dirpath
    if config.checkpoint.save_last and config.last_checkpoint.save_top_k != 0:
        raise ToolkitError(
            "--checkpoint.save_last and the last_checkpoint callback would both write last.ckpt; drop "
            "--checkpoint.save_last (last_checkpoint rewrites last.ckpt every epoch) or set "
            "--last_checkpoint.save_top_k 0"
        )


def check_subcommand_inputs(
    subcommand: str, ckpt_path: str | None, ensemble_ckpts: list[str] | None, readers: CheckpointReaders
) -> None:
    """Refuse options that a subcommand would otherwise ignore or answer with a meaningless number."""
    if subcommand in EVAL_COMMANDS and not ckpt_path:
        raise ToolkitError(
            f"toolkit {subcommand} needs --ckpt_path (a .ckpt file, or 'last' for <default_root_dir>/checkpoints/"
            "last.ckpt); without it the model's freshly initialised weights would be evaluated"
        )
    if ensemble_ckpts and subcommand != "test":
        raise ToolkitError(f"--ensemble_ckpts is a `toolkit test` option; toolkit {subcommand} would ignore it")
    for member in ensemble_ckpts or []:
        reader = readers.get(member)
        if reader is None:
            raise ToolkitError(f"--ensemble_ckpts: checkpoint {member} {_not_a_file(member)}; pass .ckpt files")
        reader.check()


def check_run_home(root: Path, ckpt_dir: Path) -> None:
    """A new fit never writes into a folder that holds another run's checkpoints or result (they would mix)."""
    found = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    found += [RESULT_FILE] if (root / RESULT_FILE).is_file() else []
    if found:
        shown = ", ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
        raise ToolkitError(
            f"{root} already holds a run ({shown}); resume it with --ckpt_path last, or start a new run in another "
            "folder with --trainer.default_root_dir (or delete the old one)"
        )


def resolve_ckpt(ckpt_path: str, dirpath: str, readers: CheckpointReaders) -> str:
    """``last`` -> ``<checkpoint dir>/last.ckpt`` (Lightning would look in the logger's per-run folder instead)."""
    if ckpt_path == "last":
        path = Path(dirpath) / LAST_CHECKPOINT
        if not path.is_file():
            raise ToolkitError(f"--ckpt_path last: no {path}; train first or pass a checkpoint file")
        return str(path)
    reader = readers.get(ckpt_path)
    if ckpt_path not in ("best", "hpc", "registry") and reader is None:
        raise ToolkitError(f"checkpoint {ckpt_path} {_not_a_file(ckpt_path)}; pass an existing .ckpt file or 'last'")
    if reader is not None:
        reader.check()
    return ckpt_path


def is_toolkit_logger(logger: Any) -> bool:
    """Whether the configured logger is the toolkit's W&B logger (whose run this module names)."""
    path = getattr(logger, "class_path", None) if logger is not None else None
    return isinstance(path, str) and flat_path(path) == "toolkit.tracking.WandbLogger"  # however it is spelled


def name_wandb_run(logger: Any, root: Path, ablation: Any) -> None:
    """The W&B run's folder (``<root>/wandb``) and, for an ablation run, its group, job type, tags and name."""
    args = logger.init_args
    check_init_kwargs(args.get("init_kwargs"))  # jsonargparse would wrap the logger's own refusal
    if args.save_dir is None:
        args.save_dir = str(root)
    if ablation is not None:
        args.group = args.group or ablation.name
        args.job_type = args.job_type or ablation.variant
        args.tags = list(dict.fromkeys([*(args.tags or []), ablation.variant, f"seed={ablation.seed}"]))
        args.name = args.name or f"{ablation.variant}-seed{ablation.seed}"


def resume_wandb_run(logger: Any, run_id: str, save_config_kwargs: dict[str, Any]) -> None:
    """Online: continue the checkpoint's W&B run; offline: start a new one whose config says ``resumed_from``."""
    from toolkit.lightning_cli.tracking import resolve_mode

    mode = logger.init_args.mode
    if mode in ("online",) or (mode == "auto" and resolve_mode("auto") == "online"):
        logger.init_args.id = logger.init_args.id or run_id
    else:
        save_config_kwargs["resumed_from"] = run_id
