"""The helpers the smolm135 scripts share: tokenizer, data, training config, optimizer, one run's state,
runtime, checkpoints (and the output folders), the run log, the model card and the one error type for user
mistakes. The architecture itself lives in
`smollm135_model.py` at the top level, beside the scripts."""
