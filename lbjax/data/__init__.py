"""Data: datasets in host memory (`datasets`), the deterministic batch stream (`pipeline`) and
on-device augmentation (`augment`). See WORKSPACE.md, "How a batch flows"."""
