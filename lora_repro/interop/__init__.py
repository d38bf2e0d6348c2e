"""Interoperation with the Hugging Face ecosystem: the suite's LoRA layers to and from PEFT adapters."""
