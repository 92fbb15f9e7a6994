"""Play with a trained smolm135 in the browser: a prompt in, its continuation streamed out, token by token; a
model with a chat template (one fine-tuned from SmolLM2-135M-Instruct) can also be chatted with.

    python app.py                                   # the newest models/final_model_*.pt or continued model
    python app.py --checkpoint models/final_model_<timestamp>.pt
    python app.py --model smolm135-tiny-hf          # a converted Hugging Face folder, or a Hub id
    python app.py --host 0.0.0.0 --port 7860 --share

It is also a Hugging Face Space entry point: a Space runs `app.py` with no arguments, so the model is looked
for next to this file as well as in the current folder (a native checkpoint first, then a Hugging Face folder),
and `SMOLM135_MODEL` may name a Hub model instead. A folder found that way runs no Python code but this
project's own (smolm135/interop/loading.py); serve any other with --model and --trust-remote-code. With no model
anywhere the page still opens and says how to train one.

From a notebook (`from smolm135.inference.demo import ...`):
`demo = build_demo(load_model("models/final_model_<ts>.pt")); demo.launch()`, or
`for text, status in generate_text(model, "To be", ...)` (or `chat_reply(model, "Hi!", [], ...)`) without any
page at all.
"""
from smolm135.errors import run_cli
from smolm135.inference.demo import main

if __name__ == "__main__":
    run_cli(main)
