"""`python benchmarks/run.py [...]` is `python -m benchmarks [...]` (see --help)."""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
    from benchmarks.__main__ import main

    main()
