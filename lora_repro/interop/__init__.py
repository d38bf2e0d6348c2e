"""Interoperation with the Hugging Face ecosystem: the suite's LoRA layers to and from PEFT adapters.

The method registry (lora_repro.methods) lists `interop.peft.apply` as method=peft_adapter, and
interop.peft builds on lora_repro.methods.lora: importing the registry first here makes that cycle
resolve in either import order (registry first, or this package first).
"""

import lora_repro.methods  # noqa: F401  (see above: fixes the import order)
