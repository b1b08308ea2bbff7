"""Run the pre-launch check of an ablation (:func:`~toolkit.ablation.command.check_variants`) in its own process.

The check needs torch, Lightning and timm (it parses with the CLI's parser and builds each distinct model); the
runner itself does not. Importing them into the runner would leave it at ~900 MB for the whole study (torch alone is
~500 MB resident), so a runner that has not imported torch checks in a short-lived child process, which pays the
same imports the runner would have paid and gives the memory back when it exits. A process that already holds
torch (a test, ``toolkit search``) checks in-process: a child would only add an import.

Protocol: the spec, root and GPU count go to the child's stdin as JSON; the child exits 0 (the spec is fine), 2
after writing the :class:`~toolkit.errors.ToolkitError` line to stdout, or 1 with a traceback on stderr.

    python -m toolkit.ablation.check_process < request.json

When the runner has started its warm parent (``toolkit.ablation.warm``), the check is forked from it instead, as the
internal command ``toolkit _check request.json`` (the refusal goes to the file the request's ``out`` names): the
parent imports torch, Lightning and timm once for the check and every run, where a fresh child would import them a
second time while the parent imports them too (on a loaded 2-core machine that doubled the check: 15.6 s vs 4.5 s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import ToolkitError
from toolkit.study.spec import AblationSpec

if TYPE_CHECKING:
    from toolkit.ablation.warm import WarmPool

#: the child's exit status for a refused spec (its stdout, or the request's ``out`` file, holds the reason)
REFUSED = 2
#: the internal ``toolkit`` command a warm child runs the check as (``toolkit.cli`` maps it to :func:`main`)
CHECK_COMMAND = "_check"


def check_spec(
    spec: AblationSpec, root: str | Path, gpus: int = 0, warm: WarmPool | None = None
) -> dict[str, dict[str, Any]]:
    """Check ``spec`` before any run starts: in this process if it holds torch already, else in a child: forked
    from the runner's warm parent when there is one (its imports serve the check and then the runs), else fresh.

    Returns:
        what :func:`~toolkit.ablation.command.check_variants` found per variant for the cost estimate.

    Raises:
        ToolkitError: the check's own line (naming the variant and the reason), or why the child failed.
    """
    if "torch" in sys.modules:
        from toolkit.ablation.command import check_variants

        return check_variants(spec, root, gpus)
    with tempfile.TemporaryDirectory(prefix="toolkit-check-") as tmp:
        folder = Path(tmp)
        facts = folder / "facts.json"
        request = {"spec": dataclasses.asdict(spec), "root": str(root), "gpus": gpus, "facts": str(facts)}
        code = None
        if warm is not None:
            code, output = _check_in_warm_child(warm, request, folder)
        if code is None:
            done = subprocess.run(
                [sys.executable, "-m", "toolkit.ablation.check_process"],
                input=json.dumps(request).encode(),
                stdout=subprocess.PIPE,  # stderr passes through: what the check says (weights loaded from where)
                check=False,
            )
            code, output = done.returncode, done.stdout.decode(errors="replace")
        _outcome(spec, code, output)
        return json.loads(facts.read_text()) if facts.is_file() else {}


def _check_in_warm_child(warm: WarmPool, request: dict[str, Any], folder: Path) -> tuple[int | None, str]:
    """Run the check as ``toolkit _check <request file>`` forked from the warm parent: its exit status and refusal
    (None when the parent is gone: the caller then starts a fresh child). What the check printed is echoed."""
    (folder / "request.json").write_text(json.dumps({**request, "out": str(folder / "refusal.txt")}))
    log = folder / "check.log"
    try:
        code = warm.start([CHECK_COMMAND, str(folder / "request.json")], {}, log, early=True).wait()
    except OSError:
        return None, ""
    if log.is_file():
        sys.stderr.write(log.read_text(errors="replace"))  # as the fresh child's stderr would pass through
    refusal = folder / "refusal.txt"
    return code, refusal.read_text() if refusal.is_file() else ""


def _outcome(spec: AblationSpec, code: int, refusal: str) -> None:
    if code == REFUSED:
        raise ToolkitError(refusal.strip())
    if code != 0:
        raise ToolkitError(
            f"the pre-launch check of {spec.path or spec.name} crashed (exit {code}) before any run "
            "started; its traceback is above: fix what it names and run the same command again"
        )


def main(argv: list[str] | None = None) -> int:
    """The child: read the request (stdin, or the file ``argv`` names: ``toolkit _check FILE`` in a warm child),
    check, exit without the interpreter's teardown (it only frees memory)."""
    request = json.loads(Path(argv[0]).read_text()) if argv else json.load(sys.stdin)
    spec = AblationSpec(**request["spec"])
    from toolkit.ablation.command import check_variants

    try:
        facts = check_variants(spec, request["root"], request["gpus"])
        if request.get("facts"):
            Path(request["facts"]).write_text(json.dumps(facts))
        code = 0
    except ToolkitError as err:
        if request.get("out"):
            Path(request["out"]).write_text(f"{err}\n")
        else:
            sys.stdout.write(f"{err}\n")
        code = REFUSED
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skips torch's ~1.5 s interpreter teardown; nothing is left to write


if __name__ == "__main__":
    main()
