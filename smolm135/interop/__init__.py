"""Other formats and places: pretrained models in, Hugging Face folders, GGUF files and peft adapters out, the
model card, the Hub, and one loader for any model."""
