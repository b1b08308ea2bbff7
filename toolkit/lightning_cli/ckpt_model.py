"""A checkpoint fixes its model: the model options a user gave (command line or config files) must agree with it.

LightningCLI merges a checkpoint's hyperparameters over the parsed ``model`` options (for a checkpoint file), so a
contradicting ``--model.backbone`` would be ignored without a word. Here the options the user gave explicitly, in a
``--config`` file's ``model:`` block, a ``--model`` file or value, or as ``--model.<key>``, are collected before that
merge, so the conflict is refused for every subcommand (``fit`` resuming too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import safe_yaml
from toolkit.errors import ToolkitError

#: model options that may differ from the checkpoint's: test-time switches, and pretrained (ignored: the weights come
#: from the checkpoint); num_classes and class_names come from the data (checked against the checkpoint separately)
FREE_OPTIONS = ("lesion_blocks", "pretrained", "num_classes", "class_names")


def _option_value(argv: list[str], i: int, name: str) -> str | None:
    arg = argv[i]
    if arg == name:
        return argv[i + 1] if i + 1 < len(argv) else None
    if arg.startswith(name + "="):
        return arg.split("=", 1)[1]
    return None


def _mapping(text: str | None, key: str | None = None) -> dict[str, Any]:
    """The mapping a ``--config``/``--model`` value stands for (a file, else inline YAML); ``key`` picks a block."""
    if text is None:
        return {}
    path = Path(text)
    try:
        data = safe_yaml.load(path.read_text(encoding="utf-8") if path.is_file() else text)
    except Exception:  # the parser has already read it; what it cannot read here gave no options
        return {}
    if key is not None:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def explicit_model_keys(argv: list[str]) -> set[str]:
    """The first-level ``model`` options ``argv`` sets: in ``--config`` files, ``--model`` values, ``--model.<key>``."""
    found: set[str] = set()
    for i, arg in enumerate(argv):
        arg = str(arg)
        for name, key in (("--config", "model"), ("-c", "model"), ("--model", None)):
            value = _option_value(argv, i, name)
            if value is not None:
                block = _mapping(value, key)
                found |= set(block.get("init_args", block) if key is None else block)
        if arg.startswith("--model."):
            found.add(arg[len("--model.") :].split("=")[0].split(".")[0])
    return found - {"class_path", "init_args", "dict_kwargs"}


def model_args_given(model: Any, argv: list[str]) -> dict[str, Any]:
    """The parsed values of the ``model`` options ``argv`` sets explicitly (`explicit_model_keys`)."""
    if model is None:
        return {}
    return {key: model.get(key) for key in sorted(explicit_model_keys(argv)) if key in model}


def plain(value: Any) -> Any:
    """A namespace/tuple value as plain dicts and lists, for comparing a parsed option with a saved one."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def check_against_checkpoint(given: dict[str, Any], hparams: dict[str, Any], ckpt_path: str) -> None:
    """Refuse a given model option whose value differs from the checkpoint's hyperparameter of the same name."""
    for key, value in given.items():
        if key in FREE_OPTIONS or key not in hparams:
            continue
        saved = hparams[key]
        if plain(value) != plain(saved):
            raise ToolkitError(
                f"--model.{key}={plain(value)!r} conflicts with the checkpoint's {key}={plain(saved)!r} ({ckpt_path}); "
                f"drop --model.{key} (from the command line and the config files): the checkpoint fixes the model "
                f"(only {', '.join(FREE_OPTIONS[:2])} may change)"
            )


def evaluated_run(ckpt_path: str, wandb_id: str | None) -> str:
    """What a test/validate/predict run evaluates, as its W&B group: the fit's W&B run id, else its run folder."""
    if wandb_id:
        return wandb_id
    ckpt = Path(ckpt_path).resolve()
    return (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent).name


def check_resume_folder(ckpt_path: str, checkpoint_dir: str) -> None:
    """A fit resumes the run a checkpoint belongs to: a checkpoint in another run's ``checkpoints/`` is refused.

    Resumed into another folder, the new run would continue the other run's epochs, best checkpoint and W&B run
    while its result.json says it trained on its own.
    """
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name == "checkpoints" and ckpt.parent != Path(checkpoint_dir).resolve():
        raise ToolkitError(
            f"--ckpt_path {ckpt_path} belongs to the run in {ckpt.parent.parent}, not to this one "
            f"({Path(checkpoint_dir).parent}); resume that run with --trainer.default_root_dir {ckpt.parent.parent} "
            "--ckpt_path last, or evaluate the checkpoint with toolkit test"
        )
