"""AssetMesh: a local-first asset sync mesh."""

__version__ = "0.1.0"
