"""Execute every cookbook notebook top to bottom (offline). ``--save`` writes the outputs back."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--save", action="store_true", help="write executed outputs back into the notebooks")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args()
    paths = [HERE / f"{n.removesuffix('.ipynb')}.ipynb" for n in args.names] or sorted(HERE.glob("*.ipynb"))
    failed = 0
    for path in paths:
        book = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        try:
            client = NotebookClient(
                book, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
            )
            client.execute()
        except Exception as exc:  # report every notebook, then fail
            failed += 1
            print(f"FAILED {path.name}: {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
            continue
        print(f"ok {path.name} ({time.perf_counter() - start:.0f}s)", flush=True)
        if args.save:
            nbformat.write(book, path)
    print(f"cookbook: {len(paths) - failed} of {len(paths)} notebooks ran top to bottom")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
