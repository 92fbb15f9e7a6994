"""Text in, token batches out: where documents come from, the tokenizers, the token cache, batches."""
