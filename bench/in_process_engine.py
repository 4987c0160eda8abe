"""The engine in a process of its own, for bench/service.py's overhead figures: the child is
`bench/service.py --in-process-engine`, which loads the weights once and runs
`worker.engine.stylize` for each JSON request on its stdin. A library module of bench/ (not a
package)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "bench" / "service.py"


class InProcessEngine:
    """`worker.engine.stylize` called directly, in a process of its own that keeps its weights
    between runs, as a worker's pool process does. Its own process and session, so that Linux's
    autogroup scheduling treats it as it treats the worker on a busy machine."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), ENGINE_CHILD],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, content: Path, style: Path, fields: dict[str, object]) -> tuple[float, dict]:
        """Seconds from reading the two files to the engine's Result, and the params it ran."""
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"content": str(content), "style": str(style), **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the in-process engine stopped (exit {self.process.wait()})")
        answer = json.loads(line)
        return answer["seconds"], answer["params"]

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


ENGINE_CHILD = "--in-process-engine"  # the argument that makes this script InProcessEngine's child


def in_process_engine() -> int:
    """InProcessEngine's child: one JSON request a line on stdin, one JSON answer a line out."""
    from shared.images import decode_image
    from shared.params import StyleParams
    from worker.engine import Result, load_weights, stylize

    weights = load_weights("random")
    for line in sys.stdin:
        ask = json.loads(line)
        params = StyleParams(
            weights="random", size=ask["size"], iterations=ask["iterations"], snapshot_every=ask["snapshot_every"]
        )
        began = time.perf_counter()
        # As the worker does: decode the stored bytes, then run the engine to its Result (the
        # snapshots are made by the engine; storing them is the service's own work).
        content = decode_image(Path(ask["content"]).read_bytes())
        style = decode_image(Path(ask["style"]).read_bytes())
        result = None
        for event in stylize(content, [style], params, device="auto", weights=weights):
            if isinstance(event, Result):
                result = event
        seconds = time.perf_counter() - began
        assert result is not None and not result.canceled
        print(json.dumps({"seconds": seconds, "params": params.model_dump(mode="json")}), flush=True)
    return 0
