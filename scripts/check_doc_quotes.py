"""Checks that every code block a doc marks as a quote of a file is that file, byte for byte.

A quote is an HTML comment naming a path relative to the repository root, then a fenced block:

    <!-- quote: examples/consumer/src/bin/predict.rs -->
    ```rust
    ...the file...
    ```

Usage: python scripts/check_doc_quotes.py DOC.md [DOC.md ...]
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUOTE = re.compile(r"<!-- quote: (\S+) -->\n```[^\n]*\n(.*?)```\n", re.S)


def main(docs):
    failures = 0
    for doc in docs:
        text = Path(doc).read_text()
        quotes = QUOTE.findall(text)
        if not quotes:
            print(f"{doc}: no quotes", file=sys.stderr)
            failures += 1
        for path, block in quotes:
            if (ROOT / path).read_text() != block:
                print(f"{doc}: the quote of {path} differs from the file", file=sys.stderr)
                failures += 1
        print(f"{doc}: {len(quotes)} quotes checked")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
