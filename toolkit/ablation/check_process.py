"""Run the pre-launch check of an ablation (:func:`~toolkit.ablation.command.check_variants`) in its own process.

The check needs torch, Lightning and timm (it parses with the CLI's parser and builds each distinct model); the
runner itself does not. Importing them into the runner would leave it at ~900 MB for the whole study (torch alone is
~500 MB resident), so a runner that has not imported torch checks in a short-lived child process, which pays the
same imports the runner would have paid and gives the memory back when it exits. A process that already holds
torch (a test, ``toolkit search``) checks in-process: a child would only add an import.

Protocol: the spec, root and GPU count go to the child's stdin as JSON; the child exits 0 (the spec is fine), 2
after writing the :class:`~toolkit.errors.ToolkitError` line to stdout, or 1 with a traceback on stderr.

    python -m toolkit.ablation.check_process < request.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.study.spec import AblationSpec

#: the child's exit status for a refused spec (its stdout holds the reason)
REFUSED = 2


def check_spec(spec: AblationSpec, root: str | Path, gpus: int = 0) -> None:
    """Check ``spec`` before any run starts: in this process if it holds torch already, else in a child.

    Raises:
        ToolkitError: the check's own line (naming the variant and the reason), or why the child failed.
    """
    if "torch" in sys.modules:
        from toolkit.ablation.command import check_variants

        check_variants(spec, root, gpus)
        return
    request = json.dumps({"spec": dataclasses.asdict(spec), "root": str(root), "gpus": gpus})
    done = subprocess.run(
        [sys.executable, "-m", "toolkit.ablation.check_process"],
        input=request.encode(),
        stdout=subprocess.PIPE,  # stderr passes through: what the check says (weights loaded from where) is seen
        check=False,
    )
    if done.returncode == REFUSED:
        raise ToolkitError(done.stdout.decode(errors="replace").strip())
    if done.returncode != 0:
        raise ToolkitError(
            f"the pre-launch check of {spec.path or spec.name} crashed (exit {done.returncode}) before any run "
            "started; its traceback is above: fix what it names and run the same command again"
        )


def main() -> None:
    """The child: read the request, check, exit without the interpreter's teardown (it only frees memory)."""
    request = json.load(sys.stdin)
    spec = AblationSpec(**request["spec"])
    from toolkit.ablation.command import check_variants

    try:
        check_variants(spec, request["root"], request["gpus"])
        code = 0
    except ToolkitError as err:
        sys.stdout.write(f"{err}\n")
        code = REFUSED
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skips torch's ~1.5 s interpreter teardown; nothing is left to write


if __name__ == "__main__":
    main()
