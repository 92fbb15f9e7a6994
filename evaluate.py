"""Score models on a text: bits per byte, loss per token and perplexity, over sliding windows.

    python evaluate.py models/final_model_<ts>.pt --data input.txt
    python evaluate.py --compare models/final_model_a.pt smolm135-tiny-hf --data valid.parquet --text-field text

MODEL is a training checkpoint (.pt), a Hugging Face model folder (ours from convert_to_hf.py, or any
causal LM saved with transformers), a .gguf file, or the built-in smollm2-135m-instruct. --data is a text file, .jsonl/.jsonl.gz/.parquet, a folder or glob of
them, or a saved dataset, as for the trainer. Bits per byte (the text's total loss in bits over its
UTF-8 bytes) compares models with different tokenizers; loss per token and perplexity only compare models
that share one. A folder that would run Python code other than this project's is scored only when named
with --trust-remote-code (smolm135/interop/loading.py). From a notebook (`from smolm135.inference.evaluate
import evaluate`): `evaluate(["model.pt"], "valid.txt")` returns the scores.
"""
from smolm135.errors import run_cli
from smolm135.inference.evaluate import main

if __name__ == "__main__":
    run_cli(main)
