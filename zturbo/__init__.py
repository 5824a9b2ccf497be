"""zturbo: run Z-Image-Turbo locally — fast on big GPUs, usable on small ones, ComfyUI-compatible."""

__version__ = "0.1.0"
