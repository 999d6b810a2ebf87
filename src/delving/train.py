"""`python -m delving.train`: the same as delving-train (what torchrun and srun launch)."""

from delving.cli.train import main

if __name__ == "__main__":
    main()
