"""steeldefect: a reproducible DVC pipeline for a ResNet50 steel-defect classifier."""
