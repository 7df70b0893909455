"""`python -m mae_transfer <command> ...` = `mae-transfer <command> ...` (what torchrun runs: `-m mae_transfer`)."""
from .cli import main

if __name__ == "__main__":
    main()
