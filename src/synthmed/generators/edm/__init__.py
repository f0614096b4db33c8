"""EDM (Karras et al., NeurIPS 2022) class-conditional pixel-space diffusion: ``generator.kind: edm``."""
