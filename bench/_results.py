"""Write one benchmark's table into bench/RESULTS.md, replacing only that benchmark's section."""

from __future__ import annotations

import fcntl
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEach section is written by `bench/<name>.py`; ratios are measured side by side in one run.\n"


def update_section(name: str, markdown: str, command: str | None = None) -> Path:
    """Replace the `<!-- bench:name -->` section of RESULTS.md with `markdown` (appended if new);
    `command` (default: this process's arguments) is recorded as the one that produced it."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = command or " ".join(["python", f"bench/{name}.py", *sys.argv[1:]])
    block = f"{start}\n## {name}\n\n_run {stamp}, `{command}`_\n\n{markdown.strip()}\n{end}"
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, RESULTS)
    return RESULTS
