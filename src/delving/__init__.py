"""delving: a reproduction of He et al., "Delving Deep into Rectifiers" (2015)."""

__version__ = "0.1.0"
