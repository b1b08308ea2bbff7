"""Many bad inputs across every entry point: each gets exit 2, one `error:` line naming it, no traceback, nothing lost.

All run in this process through ``toolkit.cli.main`` (a subprocess per case would cost ~8 s each). One real earlier
run (a tiny digits fit) lives next to the inputs; after every case its files must be byte-identical.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DIGITS, QUICK, ROOT, fit, payload_checkpoint
from PIL import Image

from toolkit.cli import main


def _images(folder: Path, classes: dict[str, int], size: int = 12, suffix: str = ".png") -> Path:
    for c, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (size, size), (30 * c, 7 * i % 255, 90)).save(folder / name / f"{i}{suffix}")
    return folder


def _truncated_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 255, (64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is intact: Image.verify() would pass it
    return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """An earlier real run, and one file or folder per kind of bad input."""
    base = tmp_path_factory.mktemp("bad")
    earlier = base / "earlier"
    fit(earlier)
    good_ckpt = earlier / "checkpoints" / "last.ckpt"
    inputs = base / "inputs"
    inputs.mkdir()
    truncated = inputs / "truncated.ckpt"
    truncated.write_bytes(good_ckpt.read_bytes()[:5000])
    (inputs / "text.ckpt").write_text("this is not a checkpoint\n")
    marker = base / "PWNED"  # what every payload below would create if it were unpickled
    payload_checkpoint(good_ckpt, inputs / "evil.ckpt", marker)
    payload_checkpoint(good_ckpt, inputs / "evil_hparams.ckpt", marker, "hparams")
    (inputs / "evil_run" / "checkpoints").mkdir(parents=True)
    payload_checkpoint(good_ckpt, inputs / "evil_run" / "checkpoints" / "last.ckpt", marker)
    nan = torch.load(good_ckpt, map_location="cpu", weights_only=True)
    nan["state_dict"]["head.1.weight"].fill_(float("nan"))
    torch.save(nan, inputs / "nan.ckpt")
    weights = {k.removeprefix("backbone."): v for k, v in nan["state_dict"].items() if k.startswith("backbone.")}
    torch.save(weights, inputs / "plain.pth")
    payload_checkpoint(inputs / "plain.pth", inputs / "evil.pth", marker)
    (inputs / "plain.pth").unlink()
    (inputs / "garbage.pth").write_bytes(b"\x80\x04garbage that is no pickle" * 10)
    (inputs / "weights.txt").write_text("weights\n")
    _images(inputs / "one_class", {"cats": 6})
    _images(inputs / "twelve", {"a": 3, "b": 3, "c": 3, "d": 3})
    _images(inputs / "two_class", {"a": 10, "b": 10})
    jpeg_root = _images(inputs / "jpegs", {"a": 10, "b": 10}, suffix=".jpg")
    _truncated_jpeg(jpeg_root / "b" / "cut.jpg")
    _images(inputs / "split" / "train", {"a": 8, "b": 8})
    _images(inputs / "split" / "val", {"a": 2, "b": 2, "zebra": 2})
    (inputs / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(inputs / "flat" / "x.png")
    _images(inputs / "broken_png", {"a": 8, "b": 8})
    (inputs / "broken_png" / "a" / "broken.png").write_bytes(b"not an image")
    (inputs / "empty").mkdir()
    (inputs / "list.txt").write_text("two_class/a/0.png\ntwo_class/a/gone.png\n")
    _truncated_jpeg(inputs / "predict_cut" / "cut.jpg")
    _images(inputs / "empty_class", {"a": 10, "b": 10, "c": 0})
    _images(inputs / "dup_link", {"a": 10, "b": 10})
    (inputs / "dup_link" / "b" / "same.png").symlink_to(inputs / "dup_link" / "a" / "0.png")
    _images(inputs / "dup_copy", {"a": 10, "b": 10})
    (inputs / "dup_copy" / "b" / "copy.png").write_bytes((inputs / "dup_copy" / "a" / "0.png").read_bytes())
    for split, count in (("train", 8), ("val", 3), ("test", 3)):
        _images(inputs / "dup_split" / split, {"a": count, "b": count})  # the same pictures in every split
    _images(inputs / "float_tif", {"a": 10, "b": 10})
    Image.fromarray(np.full((12, 12), 0.5, np.float32)).save(inputs / "float_tif" / "a" / "depth.tif")
    (inputs / "afile").write_text("a file where a folder belongs\n")
    (inputs / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (inputs / "bomb.yaml").write_text(BOMB)
    base_cfg = f"base: [{DIGITS}]\nbaseline: v\n"
    yamls = {
        "syntax.yaml": "model:\n  drop_rate: [0.1\n",
        "unknown_key.yaml": "model:\n  backbon: test_resnet\n",
        "off.yaml": "model:\n  batchnorm: off\n",
        "spec_unknown.yaml": "name: s\n" + base_cfg + "seeds: [0]\nvariantz: {}\n",
        "spec_bad_override.yaml": "name: s2\n"
        + base_cfg
        + "seeds: [0]\nvariants:\n  v: {model.backbon: test_resnet}\n",
        "spec_no_seeds.yaml": "name: s3\n" + base_cfg + "seeds: []\nvariants: {v: {}}\n",
        "spec_ok.yaml": "name: s4\n" + base_cfg + "seeds: [0]\nvariants: {v: {}}\n",
        "spec_seed_big.yaml": "name: s5\n" + base_cfg + "seeds: [0, 4294967296]\nvariants: {v: {}}\n",
        "spec_seed_neg.yaml": "name: s6\n" + base_cfg + "seeds: [-3]\nvariants: {v: {}}\n",
        "spec_bomb.yaml": "name: s7\n" + base_cfg + "seeds: [0]\nvariants: {v: {}}\n" + BOMB.replace("a:", "x_a:"),
        "spec_base_bomb.yaml": "name: s8\nbase: [bomb.yaml]\nbaseline: v\nseeds: [0]\nvariants: {v: {}}\n",
        "spec_binary_base.yaml": "name: s9\nbase: [binary.yaml]\nbaseline: v\nseeds: [0]\nvariants: {v: {}}\n",
        "os_system.yaml": "model:\n  optimizer:\n    class_path: os.system\n    init_args: {command: touch PWNED}\n",
        "popen_scheduler.yaml": "model:\n  lr_scheduler:\n    class_path: os.system\n    init_args: {command: x}\n",
        "vit.yaml": "model:\n  backbone: test_vit\n",
        "drop_half.yaml": "model:\n  drop_rate: 0.5\n",
        "rmtree.yaml": "model:\n  optimizer:\n    class_path: shutil.rmtree\n    init_args: {path: nowhere}\n",
        "callback_system.yaml": "trainer:\n  callbacks:\n    - class_path: subprocess.run\n      init_args: {args: x}\n",  # noqa: E501
        "negative_lr.yaml": "model:\n  optimizer:\n    class_path: torch.optim.SGD\n    init_args: {lr: -0.1}\n",
    }
    long = "v" * 300
    yamls.update(
        {
            "spec_variant_ledger.yaml": "name: s10\n" + base_cfg + "seeds: [0]\nvariants: {v: {}, ledger.json: {}}\n",
            "spec_variant_report.yaml": "name: s11\n" + base_cfg + "seeds: [0]\nvariants: {v: {}, Report: {}}\n",
            "spec_variant_lock.yaml": "name: s12\n" + base_cfg + "seeds: [0]\nvariants: {v: {}, runner.lock: {}}\n",
            "spec_variant_newline.yaml": "name: s13\n" + base_cfg + 'seeds: [0]\nvariants: {v: {}, "w\\n": {}}\n',
            "spec_name_newline.yaml": 'name: "s14\\n"\n' + base_cfg + "seeds: [0]\nvariants: {v: {}}\n",
            "spec_variant_long.yaml": "name: s15\n" + base_cfg + f"seeds: [0]\nvariants: {{v: {{}}, {long}: {{}}}}\n",
            "spec_name_long.yaml": f"name: {long}\n" + base_cfg + "seeds: [0]\nvariants: {v: {}}\n",
        }
    )
    for name, text in yamls.items():
        (inputs / name).write_text(text)
    for folder, snapshot, journal in (
        ("ledger_list", {"r1": [1, 2]}, None),
        ("ledger_status", {"r2": {"status": "finished"}}, None),
        ("ledger_attempts", {"r3": {"status": "done", "attempts": "two"}}, None),
        ("journal_record", {}, {"id": "r4", "record": {"status": "done", "exit_code": "0"}}),
    ):
        (inputs / folder / "s4").mkdir(parents=True)
        (inputs / folder / "s4" / "ledger.json").write_text(json.dumps({"version": 1, "runs": snapshot}))
        (inputs / folder / "s4" / "ledger.json.lock").touch()  # a reader's lock file: not the ledger's content
        if journal is not None:
            (inputs / folder / "s4" / "ledger.journal").write_text(json.dumps(journal) + "\n")
    ns = SimpleNamespace(base=base, earlier=earlier, ckpt=str(good_ckpt), inputs=inputs, new=base / "new")
    ns.before = _snapshot(earlier, inputs)
    return ns


#: a "billion laughs" document: nine levels of nine aliases expand to 9**9 strings
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def _snapshot(*roots: Path) -> dict[Path, bytes]:
    """Every file's bytes; W&B's ``debug-core.log`` is a symlink to the W&B service's own log, not the run's file."""
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _fit(*args: str) -> Callable[[SimpleNamespace], list[str]]:
    return lambda c: ["fit", *QUICK, "--trainer.default_root_dir", str(c.new), *args]


def _folder(name: str, *args: str) -> Callable[[SimpleNamespace], list[str]]:
    return lambda c: [*_fit("--data.source", "folder", "--data.root", str(c.inputs / name), *args)(c)]


def _eval(sub: str, *args: str, ckpt: str | None = "good") -> Callable[[SimpleNamespace], list[str]]:
    def build(c: SimpleNamespace) -> list[str]:
        path = {"good": c.ckpt, None: None}.get(ckpt, str(c.inputs / str(ckpt)))
        given = ["--ckpt_path", path] if path else []
        extra = [str(c.inputs / a[1:]) if a.startswith("@") else a for a in args]
        return [sub, *QUICK, "--trainer.default_root_dir", str(c.new), *given, *extra]

    return build


def _with_inputs(*args: str) -> Callable[[SimpleNamespace], list[str]]:
    """``@name`` is a file under the inputs folder, ``%earlier`` the earlier run's folder."""

    def build(c: SimpleNamespace) -> list[str]:
        subst = {"%earlier": str(c.earlier), "%new": str(c.new)}
        return [subst.get(a, str(c.inputs / a[1:]) if a.startswith("@") else a) for a in args]

    return build


#: (id, argv builder, text the error line must contain: the culprit)
CASES: list[tuple[str, Callable[[SimpleNamespace], list[str]], str]] = [
    # fit: model options
    ("drop_rate", _fit("--model.drop_rate", "1.5"), "drop_rate 1.5"),
    ("drop_path_rate", _fit("--model.drop_path_rate", "-0.1"), "drop_path_rate -0.1"),
    ("label_smoothing", _fit("--model.label_smoothing", "1.0"), "label_smoothing 1.0"),
    ("unknown_backbone", _fit("--model.backbone", "resnet18x"), "resnet18x"),
    ("batchnorm_literal", _fit("--model.batchnorm", "maybe"), "batchnorm"),
    ("unfreeze_without_freeze", _fit("--model.unfreeze_at_epoch", "2"), "freeze_backbone"),
    (
        "unfreeze_never_reached",
        _fit("--model.freeze_backbone", "true", "--model.unfreeze_at_epoch", "1", "--trainer.max_epochs", "1"),
        "unfreeze_at_epoch 1",
    ),
    ("zero_init_last_vit", _fit("--model.backbone", "test_vit", "--model.zero_init_last", "true"), "zero_init_last"),
    ("backbone_lr_scale", _fit("--model.backbone_lr_scale", "-1"), "backbone_lr_scale"),
    ("unknown_option", _fit("--model.dropout", "0.1"), "dropout"),
    # fit: data options
    ("batch_size_0", _fit("--data.batch_size", "0"), "batch_size 0"),
    ("num_workers", _fit("--data.num_workers", "-1"), "num_workers -1"),
    ("image_size_0", _fit("--data.image_size", "0"), "image_size 0"),
    ("val_fraction", _fit("--data.val_fraction", "1.2"), "val_fraction"),
    ("mixup_negative", _fit("--data.mixup_alpha", "-1"), "mixup_alpha"),
    ("mixup_odd_batch", _fit("--data.mixup_alpha", "0.2", "--data.batch_size", "7"), "batch_size"),
    (
        "mixup_batch_over_train",
        _fit("--data.mixup_alpha", "0.2", "--data.batch_size", "16", "--data.train_subset", "10"),
        "batch_size 16",
    ),
    ("train_subset_0", _fit("--data.train_subset", "0"), "train_subset"),
    ("source_literal", _fit("--data.source", "imagenet"), "source"),
    ("torchvision_name", _fit("--data.source", "torchvision", "--data.name", "CIFAR11"), "CIFAR11"),
    ("folder_no_root", _fit("--data.source", "folder"), "--data.root"),
    ("folder_missing", _folder("nowhere"), "nowhere"),
    # image folders and files
    ("one_class", _folder("one_class"), "one_class"),
    ("twelve_images", _folder("twelve"), "12 images"),
    ("truncated_jpeg", _folder("jpegs"), "cut.jpg"),
    ("val_class_unknown", _folder("split"), "zebra"),
    ("flat_folder", _folder("flat"), "no class subfolders"),
    ("undecodable_png", _folder("broken_png"), "broken.png"),
    ("empty_folder", _folder("empty"), "empty"),
    # weights
    ("garbage_pth", lambda c: _fit("--model.pretrained", str(c.inputs / "garbage.pth"))(c), "garbage.pth"),
    ("missing_pth", lambda c: _fit("--model.pretrained", str(c.inputs / "gone.pth"))(c), "gone.pth"),
    ("weights_suffix", lambda c: _fit("--model.pretrained", str(c.inputs / "weights.txt"))(c), "weights.txt"),
    # config files
    ("config_missing", _with_inputs("fit", "--config", "@nope.yaml"), "nope.yaml"),
    ("config_syntax", _with_inputs("fit", "--config", DIGITS, "--config", "@syntax.yaml"), "syntax.yaml"),
    ("config_unknown_key", _with_inputs("fit", "--config", DIGITS, "--config", "@unknown_key.yaml"), "backbon"),
    ("config_unquoted_off", _with_inputs("fit", "--config", DIGITS, "--config", "@off.yaml"), "batchnorm"),
    # checkpoints and run homes
    ("fit_into_earlier_run", _with_inputs("fit", *QUICK, "--trainer.default_root_dir", "%earlier"), "earlier"),
    ("fit_truncated_ckpt", lambda c: _fit("--ckpt_path", str(c.inputs / "truncated.ckpt"))(c), "truncated.ckpt"),
    ("fit_missing_ckpt", lambda c: _fit("--ckpt_path", str(c.inputs / "gone.ckpt"))(c), "gone.ckpt"),
    ("fit_ensemble_ckpts", lambda c: _fit("--ensemble_ckpts", c.ckpt)(c), "--ensemble_ckpts"),
    ("test_no_ckpt", _eval("test", ckpt=None), "--ckpt_path"),
    ("validate_no_ckpt", _eval("validate", ckpt=None), "--ckpt_path"),
    ("test_truncated_ckpt", _eval("test", ckpt="truncated.ckpt"), "truncated.ckpt"),
    ("test_text_ckpt", _eval("test", ckpt="text.ckpt"), "text.ckpt"),
    ("validate_missing_ckpt", _eval("validate", ckpt="gone.ckpt"), "gone.ckpt"),
    ("test_last_without_run", _eval("test", "--ckpt_path", "last", ckpt=None), "--ckpt_path last"),
    (
        "test_class_count",
        _eval("test", "--data.source", "folder", "--data.root", "@two_class"),
        "10 classes",
    ),
    ("ensemble_truncated_member", _eval("test", "--ensemble_ckpts", "@truncated.ckpt"), "truncated.ckpt"),
    ("ensemble_missing_member", _eval("test", "--ensemble_ckpts", "@gone.ckpt"), "gone.ckpt"),
    ("test_model_conflict", _eval("test", "--model.backbone", "test_vit"), "backbone"),
    # predict
    ("predict_root_missing", _eval("predict", "--data.predict_root", "@nowhere"), "nowhere"),
    ("predict_root_empty", _eval("predict", "--data.predict_root", "@empty"), "empty"),
    ("predict_list_missing_file", _eval("predict", "--data.predict_root", "@list.txt"), "gone.png"),
    ("predict_truncated_jpeg", _eval("predict", "--data.predict_root", "@predict_cut"), "cut.jpg"),
    # ablate, report, weights
    ("ablate_spec_missing", _with_inputs("ablate", "run", "@nope_spec.yaml", "--dry_run"), "nope_spec.yaml"),
    ("ablate_spec_unknown_key", _with_inputs("ablate", "run", "@spec_unknown.yaml", "--dry-run"), "variantz"),
    ("ablate_spec_bad_override", _with_inputs("ablate", "run", "@spec_bad_override.yaml", "--dry_run"), "backbon"),
    ("ablate_spec_no_seeds", _with_inputs("ablate", "run", "@spec_no_seeds.yaml", "--dry_run"), "seeds"),
    (
        "ablate_devices",
        _with_inputs("ablate", "run", "@spec_ok.yaml", "--devices", "a,b", "--dry_run"),
        "--devices",
    ),
    (
        "ablate_workers_type",
        _with_inputs("ablate", "run", "@spec_ok.yaml", "--workers", "many"),
        "workers",
    ),
    ("ablate_unknown_option", lambda c: ["ablate", "run", "x.yaml", "--fast"], "--fast"),
    ("ablate_status_missing", _with_inputs("ablate", "status", "@nope_spec.yaml"), "nope_spec.yaml"),
    ("report_spec_missing", _with_inputs("report", "@nope_spec.yaml"), "nope_spec.yaml"),
    ("report_unknown_option", lambda c: ["report", "x.yaml", "--colour"], "--colour"),
    ("weights_unknown_option", lambda c: ["weights", "--all"], "--all"),
    # issue 19: silent wrong data, hangs and "unexpected" errors
    ("empty_class_folder", _folder("empty_class"), "empty_class/c"),
    ("image_linked_into_two_classes", _folder("dup_link"), "same.png"),
    ("float_image", _folder("float_tif"), "depth.tif"),
    ("seed_too_big", _fit("--seed_everything", "4294967296"), "--seed_everything 4294967296"),
    ("seed_negative", _fit("--seed_everything", "-1"), "--seed_everything -1"),
    ("negative_lr", _fit("--model.optimizer.init_args.lr", "-0.5"), "lr -0.5"),
    ("negative_weight_decay", _fit("--model.optimizer.init_args.weight_decay", "-1"), "weight_decay -1"),
    ("negative_lr_config", _with_inputs("fit", *QUICK, "--config", "@negative_lr.yaml"), "lr -0.1"),
    ("optimizer_os_system", _with_inputs("fit", *QUICK, "--config", "@os_system.yaml"), "os.system"),
    ("optimizer_rmtree", _with_inputs("fit", *QUICK, "--config", "@rmtree.yaml"), "shutil.rmtree"),
    ("callback_subprocess", _with_inputs("fit", *QUICK, "--config", "@callback_system.yaml"), "subprocess.run"),
    ("scheduler_os_system", _with_inputs("fit", *QUICK, "--config", "@popen_scheduler.yaml"), "os.system"),
    ("root_dir_is_file", _with_inputs("fit", *QUICK, "--trainer.default_root_dir", "@afile"), "default_root_dir"),
    ("root_dir_under_file", _with_inputs("fit", *QUICK, "--trainer.default_root_dir", "@afile/run"), "afile"),
    ("test_root_dir_is_file", _eval("test", "--trainer.default_root_dir", "@afile"), "default_root_dir"),
    ("config_binary", _with_inputs("fit", "--config", "@binary.yaml"), "binary.yaml"),
    ("config_bomb", _with_inputs("fit", "--config", "@bomb.yaml"), "bomb.yaml"),
    ("config_bomb_nested", _with_inputs("fit", *QUICK, "--model", "@bomb.yaml"), "billion laughs"),
    ("validate_config_bomb", _with_inputs("validate", "--config", "@bomb.yaml"), "bomb.yaml"),
    ("ablate_seed_too_big", _with_inputs("ablate", "run", "@spec_seed_big.yaml", "--dry-run"), "4294967296"),
    ("ablate_seed_negative", _with_inputs("ablate", "run", "@spec_seed_neg.yaml", "--dry-run"), "-3"),
    ("ablate_status_seed_too_big", _with_inputs("ablate", "status", "@spec_seed_big.yaml"), "4294967296"),
    ("ablate_spec_bomb", _with_inputs("ablate", "run", "@spec_bomb.yaml", "--dry-run"), "spec_bomb.yaml"),
    ("ablate_status_spec_bomb", _with_inputs("ablate", "status", "@spec_bomb.yaml"), "spec_bomb.yaml"),
    ("ablate_base_bomb", _with_inputs("ablate", "run", "@spec_base_bomb.yaml", "--dry-run"), "bomb.yaml"),
    ("ablate_status_base_bomb", _with_inputs("ablate", "status", "@spec_base_bomb.yaml"), "bomb.yaml"),
    ("ablate_binary_base", _with_inputs("ablate", "status", "@spec_binary_base.yaml"), "binary.yaml"),
    ("ablate_spec_binary", _with_inputs("ablate", "status", "@binary.yaml"), "binary.yaml"),
    ("ablate_root_is_file", _with_inputs("ablate", "run", "@spec_ok.yaml", "--root", "@afile", "--dry-run"), "--root"),
    ("ablate_status_root_file", _with_inputs("ablate", "status", "@spec_ok.yaml", "--root", "@afile"), "--root"),
    ("report_root_is_file", _with_inputs("report", "@spec_ok.yaml", "--root", "@afile"), "--root"),
    ("report_out_is_file", _with_inputs("report", "@spec_ok.yaml", "--out", "@afile"), "--out"),
    ("report_seeds_bad", _with_inputs("report", "@spec_ok.yaml", "--seeds", "0-x"), "--seeds"),
    ("ablate_seeds_bad", _with_inputs("ablate", "run", "@spec_ok.yaml", "--seeds", "1,1", "--dry-run"), "twice"),
    (
        "ablate_set_no_equals",
        _with_inputs("ablate", "run", "@spec_ok.yaml", "--set", "max_epochs", "--dry-run"),
        "--set",
    ),
    (
        "ablate_set_unknown_key",
        _with_inputs("ablate", "run", "@spec_ok.yaml", "--set", "model.backbon=x", "--dry-run"),
        "backbon",
    ),
    ("report_spec_bomb", _with_inputs("report", "@spec_bomb.yaml"), "spec_bomb.yaml"),
    ("search_spec_bomb", _with_inputs("search", "@bomb.yaml"), "bomb.yaml"),
    (
        "fit_resume_model_conflict",
        _with_inputs(
            "fit",
            *QUICK,
            "--trainer.default_root_dir",
            "%earlier",
            "--ckpt_path",
            "last",
            "--model.backbone",
            "test_vit",
        ),
        "backbone",
    ),
    (
        "fit_resume_config_conflict",
        _with_inputs(
            "fit",
            *QUICK,
            "--config",
            "@drop_half.yaml",
            "--trainer.default_root_dir",
            "%earlier",
            "--ckpt_path",
            "last",
        ),
        "drop_rate",
    ),
    ("fit_resume_other_run", lambda c: _fit("--ckpt_path", c.ckpt)(c), "belongs to the run"),
    ("fit_other_run_backbone", lambda c: _fit("--ckpt_path", c.ckpt, "--model.backbone", "test_vit")(c), "backbone"),
    ("test_config_conflict", _eval("test", "--config", "@vit.yaml"), "backbone"),
    ("predict_config_conflict", _eval("predict", "--config", "@drop_half.yaml"), "drop_rate"),
    ("validate_model_value_conflict", _eval("validate", "--model", "{drop_rate: 0.5}"), "drop_rate"),
    # doctor: its own options, and the toolkit fit parser's checks on its config
    ("doctor_config_missing", _with_inputs("doctor", "--config", "@nope.yaml"), "nope.yaml"),
    ("doctor_out_is_file", _with_inputs("doctor", "--config", DIGITS, "--out", "@afile"), "--out"),
    ("doctor_steps_zero", _with_inputs("doctor", "--config", DIGITS, "--check-steps", "0"), "--check-steps 0"),
    ("doctor_config_bomb", _with_inputs("doctor", "--config", "@bomb.yaml"), "bomb.yaml"),
    ("doctor_config_binary", _with_inputs("doctor", "--config", "@binary.yaml"), "binary.yaml"),
    ("doctor_seed_too_big", _with_inputs("doctor", "--config", DIGITS, "--seed_everything", "-5"), "-5"),
    ("doctor_negative_lr", _with_inputs("doctor", "--config", DIGITS, "--config", "@negative_lr.yaml"), "lr -0.1"),
    ("doctor_unknown_key", _with_inputs("doctor", "--config", DIGITS, "--model.backbon", "x"), "backbon"),
    # search and weights
    ("search_spec_missing", _with_inputs("search", "@nope_search.yaml"), "nope_search.yaml"),
    ("search_spec_binary", _with_inputs("search", "@binary.yaml"), "binary.yaml"),
    ("search_unknown_option", _with_inputs("search", "@spec_ok.yaml", "--trials", "3"), "--trials"),
    ("weights_extra_argument", lambda c: ["weights", "resnet50"], "resnet50"),
    # more fit/validate/test/predict
    ("validate_seed_too_big", _eval("validate", "--seed_everything", "99999999999"), "99999999999"),
    ("predict_negative_lr", _eval("predict", "--model.optimizer.init_args.lr", "-1"), "lr -1"),
    ("predict_root_dir_is_file", _eval("predict", "--trainer.default_root_dir", "@afile"), "default_root_dir"),
    ("test_config_binary", _eval("test", "--config", "@binary.yaml"), "binary.yaml"),
    ("test_config_bomb", _eval("test", "--config", "@bomb.yaml"), "bomb.yaml"),
    ("validate_config_conflict", _eval("validate", "--config", "@vit.yaml"), "backbone"),
    ("search_root_is_file", _with_inputs("search", "@spec_ok.yaml", "--root", "@afile"), "--root"),
    # issue 30: checkpoints are data (a pickle payload never runs), non-finite weights are refused
    ("fit_payload_ckpt", lambda c: _fit("--ckpt_path", str(c.inputs / "evil.ckpt"))(c), "evil.ckpt"),
    (
        "fit_resume_payload_last",
        _with_inputs("fit", *QUICK, "--trainer.default_root_dir", "@evil_run", "--ckpt_path", "last"),
        "evil_run/checkpoints/last.ckpt",
    ),
    ("test_payload_ckpt", _eval("test", ckpt="evil.ckpt"), "evil.ckpt"),
    ("test_payload_in_hparams", _eval("test", ckpt="evil_hparams.ckpt"), "evil_hparams.ckpt"),
    ("validate_payload_ckpt", _eval("validate", ckpt="evil.ckpt"), "evil.ckpt"),
    ("predict_payload_ckpt", _eval("predict", ckpt="evil.ckpt"), "evil.ckpt"),
    ("ensemble_payload_member", _eval("test", "--ensemble_ckpts", "@evil.ckpt"), "evil.ckpt"),
    ("pretrained_payload", lambda c: _fit("--model.pretrained", str(c.inputs / "evil.pth"))(c), "evil.pth"),
    ("test_weights_only_false", _eval("test", "--weights_only", "false"), "--weights_only false"),
    ("test_nan_ckpt", _eval("test", ckpt="nan.ckpt"), "non-finite weights"),
    ("validate_nan_ckpt", _eval("validate", ckpt="nan.ckpt"), "nan.ckpt"),
    ("fit_resume_nan_ckpt", lambda c: _fit("--ckpt_path", str(c.inputs / "nan.ckpt"))(c), "nan.ckpt"),
    ("ensemble_nan_member", _eval("test", "--ensemble_ckpts", "@nan.ckpt"), "nan.ckpt"),
    # issue 30: nothing is written into the current folder unless asked ('.' asks)
    ("fit_root_dir_empty", _with_inputs("fit", *QUICK, "--trainer.default_root_dir", ""), "default_root_dir ''"),
    ("predict_root_dir_empty", _eval("predict", "--trainer.default_root_dir", "  "), "default_root_dir '  '"),
    ("ablate_root_empty", _with_inputs("ablate", "run", "@spec_ok.yaml", "--root", "", "--dry-run"), "--root ''"),
    ("report_out_empty", _with_inputs("report", "@spec_ok.yaml", "--out", ""), "--out ''"),
    ("doctor_out_empty", _with_inputs("doctor", "--config", DIGITS, "--out", ""), "--out ''"),
    # issue 30: names that collide with the runner's files, hold line breaks or exceed a file name; bad ledger records
    ("ablate_variant_ledger", _with_inputs("ablate", "run", "@spec_variant_ledger.yaml", "--dry-run"), "'ledger.json'"),
    ("ablate_variant_report", _with_inputs("ablate", "status", "@spec_variant_report.yaml"), "'Report'"),
    ("ablate_variant_lock", _with_inputs("ablate", "run", "@spec_variant_lock.yaml", "--dry-run"), "'runner.lock'"),
    ("report_variant_ledger", _with_inputs("report", "@spec_variant_ledger.yaml"), "'ledger.json'"),
    ("ablate_variant_newline", _with_inputs("ablate", "run", "@spec_variant_newline.yaml", "--dry-run"), "'w\\n'"),
    ("ablate_name_newline", _with_inputs("ablate", "status", "@spec_name_newline.yaml"), "'s14\\n'"),
    ("ablate_variant_long", _with_inputs("ablate", "run", "@spec_variant_long.yaml", "--dry-run"), "300 characters"),
    ("ablate_name_long", _with_inputs("ablate", "status", "@spec_name_long.yaml"), "300 characters"),
    ("report_name_long", _with_inputs("report", "@spec_name_long.yaml"), "300 characters"),
    ("image_copied_into_two_classes", _folder("dup_copy"), "copy.png"),
    ("image_copied_across_splits", _folder("dup_split"), "identical bytes"),
    ("duplicates_literal", _fit("--data.duplicates", "keep"), "duplicates"),
    # issue 30: every option does what it says or is refused
    ("probe_lbfgs_unfrozen", _fit("--model.probe", "lbfgs"), "--model.probe lbfgs"),
    ("train_subset_below_classes", _fit("--data.train_subset", "5"), "train_subset 5"),
    ("eval_subset_tiny", _fit("--data.eval_subset", "1"), "eval_subset 1"),
    ("eval_subset_below_two_per_class", _fit("--data.eval_subset", "15"), "use at least 20"),
    ("seed_true", _fit("--seed_everything", "true"), "--seed_everything true"),
    ("test_seed_true", _eval("test", "--seed_everything", "true"), "--seed_everything true"),
    ("accumulate_zero", _fit("--trainer.accumulate_grad_batches", "0"), "accumulate_grad_batches 0"),
    ("val_check_interval_zero", _fit("--trainer.val_check_interval", "0"), "val_check_interval 0"),
    ("max_epochs_negative", _fit("--trainer.max_epochs", "-5"), "max_epochs -5"),
    ("max_epochs_zero", _fit("--trainer.max_epochs", "0"), "max_epochs 0"),
    ("max_steps_zero", _fit("--trainer.max_steps", "0"), "max_steps 0"),
    ("check_val_zero", _fit("--trainer.check_val_every_n_epoch", "0"), "check_val_every_n_epoch 0"),
    ("limit_train_negative", _fit("--trainer.limit_train_batches", "-1"), "limit_train_batches -1"),
    ("gradient_clip_negative", _fit("--trainer.gradient_clip_val", "-1"), "gradient_clip_val -1"),
    ("log_every_zero", _fit("--trainer.log_every_n_steps", "0"), "log_every_n_steps 0"),
    ("batch_size_one_trained_bn", _fit("--data.batch_size", "1"), "batch_size 1"),
    ("fit_root_dir_forbidden", _with_inputs("fit", *QUICK, "--trainer.default_root_dir", "/sys/toolkit-run"), "/sys"),
    ("predict_root_dir_forbidden", _eval("predict", "--trainer.default_root_dir", "/sys/toolkit-run"), "/sys"),
    ("test_ckpt_is_folder", _eval("test", ckpt="empty"), "is a folder"),
    ("test_ckpt_dev_null", lambda c: [*_eval("test", ckpt=None)(c), "--ckpt_path", "/dev/null"], "not a regular file"),
    ("ensemble_member_folder", _eval("test", "--ensemble_ckpts", "@empty"), "is a folder"),
    ("split_seed_negative", _fit("--data.split_seed", "-1"), "split_seed -1"),
    ("lr_nan", _fit("--model.optimizer.init_args.lr", "nan"), "lr nan is not a finite number"),
    ("weight_decay_inf", _fit("--model.optimizer.init_args.weight_decay", "inf"), "weight_decay inf"),
    ("ledger_record_list", _with_inputs("ablate", "status", "@spec_ok.yaml", "--root", "@ledger_list"), "'r1'"),
    ("ledger_record_status", _with_inputs("ablate", "status", "@spec_ok.yaml", "--root", "@ledger_status"), "'r2'"),
    ("ledger_record_attempts", _with_inputs("ablate", "status", "@spec_ok.yaml", "--root", "@ledger_attempts"), "'r3'"),
    (
        "ledger_journal_record",
        _with_inputs("ablate", "status", "@spec_ok.yaml", "--root", "@journal_record"),
        "line 1: the record of run 'r4' has exit_code '0'",
    ),
]


def _one_error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    # a logging handler left bound to an earlier test's closed capture stream reports itself; not the CLI's output
    out = capsys.readouterr()
    err = re.sub(r"--- Logging error ---.*?\nArguments: .*?\n", "", out.err, flags=re.S)
    assert exit_.value.code == 2, err
    assert "Traceback" not in err + out.out
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_case_list_is_broad() -> None:
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES) >= 160
    entry_points = {"fit", "validate", "test", "predict", "ablate", "report", "search", "doctor", "weights"}
    reached = {
        build(SimpleNamespace(base=Path("b"), inputs=Path("i"), earlier=Path("e"), new=Path("n"), ckpt="c"))[0]
        for _, build, _ in CASES
    }
    assert reached == entry_points


@pytest.mark.parametrize(("case_id", "build", "culprit"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line(capsys, monkeypatch, ctx, case_id, build, culprit) -> None:
    monkeypatch.chdir(ctx.base)  # relative defaults (runs/, data/) land in the temporary folder
    line = _one_error_line(capsys, build(ctx))
    assert culprit in line, line
    assert not (ctx.base / "PWNED").exists()  # no checkpoint's pickle payload ran
    assert _snapshot(ctx.earlier, ctx.inputs) == ctx.before  # nothing of the earlier run (or the inputs) changed
    assert not (ctx.new / "checkpoints").exists() and not (ctx.new / "result.json").exists()


def test_cifar_config_offline_says_the_data_is_missing(capsys, monkeypatch, tmp_path) -> None:
    """The README's CIFAR-10 config without a network: one line about the data, not a URLError traceback."""
    monkeypatch.chdir(tmp_path)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # the discard port: every download is refused at once
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    config = str(ROOT / "configs" / "resnet50_cifar10_linear_probe.yaml")
    line = _one_error_line(capsys, ["fit", "--config", config, "--trainer.default_root_dir", str(tmp_path / "r")])
    assert "CIFAR10" in line and "could not be downloaded" in line and "--data.download false" in line
    assert not (tmp_path / "r").exists()


def test_a_last_training_batch_of_one_sample_is_dropped_not_crashed(tmp_path) -> None:
    """13 training images in batches of 4 leave a last batch of one, on which BatchNorm (1x1 maps at 32 px) fails."""
    from toolkit.model.classifier import ImageClassifier

    model = ImageClassifier(num_classes=10).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 3, 32, 32))  # the crash the data module avoids
    cli = fit(tmp_path, "--data.train_subset", "13", "--data.batch_size", "4", "--trainer.limit_train_batches", "1.0")
    sizes = [len(labels) for _, labels in cli.datamodule.train_dataloader()]
    assert sizes == [4, 4, 4] and cli.trainer.global_step == 3
    assert (tmp_path / "result.json").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "s.yaml", "--dry-run", "--gpus-per-run", "2", "--retry-failed", "--time-min=30"],
        ["run", "s.yaml", "--dry_run", "--gpus_per_run", "2", "--retry_failed", "--time_min=30"],
    ],
)
def test_ablate_options_take_dashes_or_underscores(argv: list[str]) -> None:
    from toolkit.ablation.cli import build_parser
    from toolkit.cli_options import parse

    args = parse(build_parser(), argv, "ablate").run
    assert (args.spec, args.dry_run, args.gpus_per_run, args.retry_failed, args.time_min) == (
        "s.yaml",
        True,
        2,
        True,
        30,
    )
    negated = parse(build_parser(), ["run", "s_x.yaml", "--no_dry_run"], "ablate").run
    assert negated.dry_run is False and negated.spec == "s_x.yaml"  # a value keeps its underscores


@pytest.mark.slow
def test_real_commands_refuse_an_alias_bomb_at_once(tmp_path) -> None:
    """The real console command (3 processes): a "billion laughs" config or spec is one line in seconds, not a hang."""
    from conftest import toolkit_cmd

    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "spec.yaml").write_text("name: b\nbase: [bomb.yaml]\nbaseline: v\nseeds: [0]\nvariants: {v: {}}\n")
    for argv in (
        ["fit", "--config", "bomb.yaml"],
        ["ablate", "run", "spec.yaml", "--dry-run"],
        ["ablate", "status", "spec.yaml"],
    ):
        done = toolkit_cmd(*argv, cwd=tmp_path, timeout=60)
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 2 and len(errors) == 1 and "bomb.yaml" in errors[0], done.stderr
        assert "billion laughs" in errors[0] and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_fit_on_a_full_disk_is_one_line_naming_its_folder_and_leaves_no_partial_checkpoint(tmp_path) -> None:
    """A file-size limit (EFBIG, as a full disk's ENOSPC) when the first checkpoint is saved; one process."""
    import subprocess
    import sys

    root = tmp_path / "run"
    argv = ["fit", *QUICK, "--trainer.default_root_dir", str(root), "--trainer.logger", "false"]
    code = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000))  # config.yaml fits, a checkpoint does not\n"
        f"from toolkit.cli import main\nmain({argv!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot write a file under {root}: File too large"), errors
    assert not list((root / "checkpoints").glob("*")) and not (root / "result.json").exists()
