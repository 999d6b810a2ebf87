"""The Hydra configs, shipped inside the package as `delving.configs` (Hydra reads pkg://delving.configs)."""
