"""retrofit: turn pretrained masked diffusion LMs (LLaDA) into flexible-length FlexMDMs."""

__version__ = "0.1.0"
