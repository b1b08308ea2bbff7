"""``toolkit fit|validate|test|predict --help`` on one screen (80 x 40): the options that matter, one line each.

LightningCLI's help lists every option of the model, the data, the Trainer and each callback with its description:
over five hundred lines, and building it imports torch and Lightning (seconds). This help is written by hand, per
subcommand, so it lists only what that subcommand uses and imports neither: a table of option, value, one-line text
and a value the parser accepts (``tests/test_help.py`` parses every listed option with it, so a renamed option
cannot linger here). ``--help full`` is jsonargparse's whole help.
"""

from __future__ import annotations

import textwrap

#: (the option and its value's name, what it does in one line, a value the parser accepts: the test parses it)
Line = tuple[str, str, str]

_CONFIG: Line = ("-c, --config FILE", "a YAML config; stack several, the last wins", "")
_ROOT: Line = ("--trainer.default_root_dir DIR", "the run folder: checkpoints, config, W&B log", "runs/x")
_EVAL_ROOT: Line = ("--trainer.default_root_dir DIR", "where its config and W&B run are written", "runs/x")
_SEED: Line = ("--seed_everything N", "the seed (init, batch order, augmentation)", "1")
_HARDWARE: list[Line] = [
    ("--trainer.accelerator NAME", "cpu, gpu or auto", "cpu"),
    ("--trainer.devices N", "how many devices (GPUs) to use", "1"),
    ("--trainer.precision P", "32-true, bf16-mixed, 16-mixed, ...", "32-true"),
]
_SOURCE: list[Line] = [
    ("--data.source NAME", "digits, folder, torchvision or fashion_mnist", "folder"),
    ("--data.root DIR", "folder of class folders (or train/ val/ test/)", "images"),
    ("--data.name NAME", "the torchvision dataset, e.g. CIFAR10", "CIFAR10"),
]
_EVAL_DATA: list[Line] = [
    ("--data.test_split MODE", "split: the source's; rest: all not trained on", "rest"),
    ("--data.eval_subset N", "at most N val and N test images (stratified)", "120"),
    ("--data.eval_batch_size N", "images per evaluation batch", "64"),
]
_EVAL_CKPT: Line = ("--ckpt_path FILE|last", "a .ckpt file; last: the run folder's last.ckpt", "last.ckpt")

_FIT: list[tuple[str, list[Line]]] = [
    (
        "run",
        [
            _CONFIG,
            _ROOT,
            ("--ckpt_path FILE|last", "resume from a checkpoint; last: the run's own", "last"),
            _SEED,
            ("--test_after_fit BOOL", "test the best checkpoint after training", "true"),
        ],
    ),
    (
        "model",
        [
            ("--model.backbone NAME", "a timm model (toolkit weights: offline ones)", "resnet18"),
            ("--model.pretrained BOOL|FILE", "ImageNet weights: true, false or a file", "true"),
            ("--model.freeze_backbone BOOL", "train the head only (a linear probe)", "true"),
            ("--model.unfreeze_at_epoch N", "frozen backbone: fine-tune it from epoch N", "2"),
            ("--model.optimizer.lr LR", "the head's lr (the backbone's: x scale)", "0.01"),
            ("--model.backbone_lr_scale X", "backbone lr = head lr x X", "0.1"),
        ],
    ),
    (
        "data",
        [
            *_SOURCE,
            ("--data.val_fraction F", "held out for val without a val split (0.15)", "0.2"),
            ("--data.test_fraction F", "held out for test without a test split (0.15)", "0.2"),
            ("--data.train_subset N", "train on N images (stratified)", "300"),
            ("--data.image_size PX", "input size (default: the backbone's)", "64"),
            ("--data.augment LEVEL", "none, mild, basic, randaugment, trivialaugment", "mild"),
            ("--data.batch_size N", "images per training batch", "32"),
        ],
    ),
    (
        "trainer",
        [
            ("--trainer.max_epochs N", "the most epochs to train", "3"),
            ("--early_stopping.patience N", "stop after N epochs without a better val/acc", "2"),
            *_HARDWARE,
        ],
    ),
]

_EVAL: dict[str, tuple[str, list[tuple[str, list[Line]]]]] = {
    "validate": (
        "Evaluate a checkpoint on the validation split (val/acc, val/f1).",
        [("run", [_EVAL_CKPT, _CONFIG, _EVAL_ROOT]), ("data", [*_SOURCE, *_EVAL_DATA[1:]]), ("trainer", _HARDWARE)],
    ),
    "test": (
        "Test a checkpoint, or an ensemble of checkpoints, on the test split.",
        [
            (
                "run",
                [
                    _EVAL_CKPT,
                    ("--ensemble_ckpts FILE ...", "also test these checkpoints' mean softmax", "a.ckpt"),
                    _CONFIG,
                    _EVAL_ROOT,
                ],
            ),
            ("data", [*_SOURCE, *_EVAL_DATA]),
            ("trainer", _HARDWARE),
        ],
    ),
    "predict": (
        "Write predictions.csv (path, label, prediction, probability) of a checkpoint.",
        [
            ("run", [_EVAL_CKPT, _CONFIG, ("--trainer.default_root_dir DIR", "where predictions.csv goes", "out")]),
            (
                "data",
                [
                    ("--data.predict_root PATH", "an image folder or a file of paths (else test)", "images"),
                    *_SOURCE,
                    _EVAL_DATA[2],
                ],
            ),
            ("trainer", _HARDWARE),
        ],
    ),
}

_EXAMPLES = {
    "fit": [
        "toolkit fit --config configs/quickstart.yaml",
        "toolkit fit --config configs/digits.yaml --trainer.max_epochs 3",
        "toolkit fit --config configs/digits.yaml --ckpt_path last",
    ],
    "validate": ["toolkit validate -c configs/digits.yaml --ckpt_path last"],
    "test": [
        "toolkit test -c configs/digits.yaml --ckpt_path last",
        "toolkit test -c configs/digits.yaml --ckpt_path a.ckpt \\",
        "    --ensemble_ckpts a.ckpt b.ckpt c.ckpt",
    ],
    "predict": [
        "toolkit predict -c configs/digits.yaml --ckpt_path last \\",
        "    --data.predict_root my_images/   # runs/digits/predictions.csv",
    ],
}

#: the option groups ``--help full`` explains (every one of them is a group of the parser: the test checks)
MORE_GROUPS = {
    "fit": "--model.*, --data.*, --trainer.*, --checkpoint.*, --early_stopping.*, --lr_monitor.*, ...",
    "eval": "--data.*, --trainer.*",
}
#: the column the one-line texts start at
_COLUMN = 34


def sections(subcommand: str) -> list[tuple[str, list[Line]]]:
    """The groups of options the short help of ``subcommand`` lists, in order."""
    return _FIT if subcommand == "fit" else _EVAL[subcommand][1]


def listed(subcommand: str) -> list[Line]:
    """Every option line the short help of ``subcommand`` lists."""
    return [line for _, lines in sections(subcommand) for line in lines]


def render(subcommand: str) -> str:
    """The short help of ``subcommand`` (``fit``, ``validate``, ``test`` or ``predict``)."""
    if subcommand == "fit":
        usage = "usage: toolkit fit [-c FILE ...] [--<key> VALUE ...]"
        about = "Train a timm backbone and a linear head on images."
    else:
        usage = f"usage: toolkit {subcommand} --ckpt_path FILE [-c FILE ...] [--<key> VALUE ...]"
        about = _EVAL[subcommand][0]
    out = [usage, about]
    for title, lines in sections(subcommand):
        out.append(f"{title}:")
        for option, text, _ in lines:
            gap = " " * max(2, _COLUMN - 2 - len(option))
            out.append(f"  {option}{gap}{text}")
    more = MORE_GROUPS["fit" if subcommand == "fit" else "eval"]
    out += [
        f"toolkit {subcommand} --help full: every option ({more}) with type, default, text; README.md, "
        "Training. --a_b = --a-b.",
        "examples:",
        *(f"  {example}" for example in _EXAMPLES[subcommand]),
    ]
    return "\n".join(_wrap(line) for line in out)


def _wrap(line: str, width: int = 80) -> str:
    """A prose line wrapped at ``width`` (option lines and examples are written to fit; they are left as they are)."""
    if len(line) <= width or line.startswith(" "):
        return line
    return "\n".join(textwrap.wrap(line, width))


def wants_short_help(args: list[str]) -> bool:
    """``-h``/``--help`` without ``full`` after it (``--help full`` asks for jsonargparse's whole help)."""
    for i, arg in enumerate(args):
        if arg in ("-h", "--help"):
            return not (i + 1 < len(args) and args[i + 1] == "full")
    return False


def full_help_args(args: list[str]) -> list[str]:
    """``args`` with the ``full`` after ``--help`` removed (jsonargparse's ``--help`` takes no value)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg in ("-h", "--help") and i + 1 < len(out) and out[i + 1] == "full":
            del out[i + 1]
            break
    return out
