"""Thin entry points (Hydra mains, drivers); the logic lives in lora_repro."""
