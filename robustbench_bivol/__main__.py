"""``python -m robustbench_bivol`` is the ``bivol-robust`` CLI (also under torchrun)."""
from .cli import main

if __name__ == "__main__":
    main()
