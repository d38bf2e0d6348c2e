"""Benchmarks of what the paper claims about cost: inference latency (Table 1 / Figure 5) and the
suite's own training path against PEFT + HF Trainer."""
