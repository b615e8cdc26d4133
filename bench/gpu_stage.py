"""Run one stage of bench/gpu.sh under its own time budget and record it, whatever happens.

    python bench/gpu_stage.py --stage NAME --budget SECONDS --file OUT/NAME.json --work DIR -- COMMAND ...

The command runs in a process group of its own with `@ROWS@` in its arguments replaced by a file it may write
its result rows to (a JSON list, or JSON lines), stdout and stderr going to DIR/logs/NAME.out and .err. When
the budget runs out the whole group is killed. Then, always:

- `--file` (a JSON object of stages, shared by related stages) gets this stage's entry: status (ok, failed,
  timed out), exit code, seconds, budget, command, the rows found (also a cut stage's, as far as it wrote
  them), and, unless ok, the last lines of its log;
- OUT/summary.txt gets a header line for the stage and its result lines (the end of its stdout; of its
  stderr too unless ok);
- OUT/logs.tar.gz, every stage's logs so far, is rewritten.

Every write is atomic, so a run killed at any point leaves each earlier stage's results complete. The exit
status is 0: one stage's failure never stops the next.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

RESULT_LINES = 40  # of stdout, into the summary
ERROR_LINES = 20  # of stderr, into the summary and the stage's entry, when it did not succeed
PYTEST_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_rows(path: Path, stdout: str) -> list:
    """The rows the stage wrote (JSON list or JSON lines), else the pytest outcomes its verbose log shows."""
    if path.is_file() and path.stat().st_size:
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
            return data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            rows = []
            for line in text.splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut mid-write
            return rows
    return [{"test": m.group(1), "outcome": m.group(2).lower()}
            for m in map(PYTEST_LINE.match, stdout.splitlines()) if m]


def tail(text: str, n: int) -> list[str]:
    return text.rstrip().splitlines()[-n:] if text.strip() else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--budget", type=float, required=True, help="seconds before the stage is killed")
    parser.add_argument("--file", type=Path, required=True, help="the stage's JSON file under OUT")
    parser.add_argument("--work", type=Path, required=True, help="folder for logs and row files")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    out = args.file.parent
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows_path = args.work / f"{args.stage}.rows"
    rows_path.unlink(missing_ok=True)
    command = [part.replace("@ROWS@", str(rows_path)) for part in command]
    stdout_path, stderr_path = logs / f"{args.stage}.out", logs / f"{args.stage}.err"

    start = time.monotonic()
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        try:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as err:
            process = None
            stderr.write(f"cannot start {command[0]}: {err}\n")
        rc, status = 127, "failed"
        if process is not None:
            try:
                rc = process.wait(timeout=args.budget)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the stage and everything it started
                except ProcessLookupError:  # it ended just now
                    pass
                rc, status = process.wait(), "timed out"
    seconds = time.monotonic() - start

    out_text = stdout_path.read_text(errors="replace")
    err_text = stderr_path.read_text(errors="replace")
    entry = {"status": status, "rc": rc, "seconds": round(seconds, 2), "budget_s": args.budget,
             "command": shlex.join(command), "rows": read_rows(rows_path, out_text)}
    if status != "ok":
        entry["log_tail"] = tail(err_text, ERROR_LINES) or tail(out_text, ERROR_LINES)
    stages = json.loads(args.file.read_text()) if args.file.is_file() else {}
    stages[args.stage] = entry
    atomic_write(args.file, json.dumps(stages, indent=2) + "\n")

    what = {"ok": "ok", "failed": f"FAILED (exit {rc})", "timed out": f"TIMED OUT after {args.budget:g} s"}[status]
    lines = [f"== {args.stage}: {what}, {seconds:.1f} s of {args.budget:g} s, {len(entry['rows'])} rows -> "
             f"{args.file.name}", *tail(out_text, RESULT_LINES)]
    if status != "ok":
        lines += ["-- stderr:", *tail(err_text, ERROR_LINES)]
    summary = out / "summary.txt"
    previous = summary.read_text() if summary.is_file() else ""
    atomic_write(summary, previous + "\n".join(lines) + "\n\n")

    archive = out / ".logs.tar.gz.tmp"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(logs, arcname="logs")
    os.replace(archive, out / "logs.tar.gz")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
