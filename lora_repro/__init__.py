"""lora-repro: reproduce, check and extend the benchmarks of LoRA (Hu et al., 2021)."""

__version__ = "0.1.0"
