"""One loader for every script: a model spec (a training checkpoint, a Hugging Face folder or Hub id, a .gguf
file, a built-in name) becomes a `LoadedModel`, and one trust policy decides whose Python code may run.

The trust policy. A Hugging Face folder may bring Python code (`auto_map` in config.json, run by transformers
with `trust_remote_code`). That code runs only when

- it is this project's own export: every .py file in the folder is byte for byte the file of the same name
  this project ships, and every `auto_map` entry names one of those files (not `someone/other--module.Class`,
  which transformers would fetch from another repository or take from its cache); or
- the user named the model and passed --trust-remote-code.

A folder found by searching (app.py with no arguments) is never trusted: it is served only if it runs no code
but ours. Our own exports, and Llama folders, never need their code at all: the native model reads them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from smollm135_model import SmoLM135_Model

from smolm135.checkpoint import TrainingFacts, load_checkpoint, read_training_info
from smolm135.errors import UserError
from smolm135.interop.pretrained import BUILTIN_MODELS, HUB_ID, download_from_hub, load_hf_folder, load_pretrained
from smolm135.data.tokenizer import GPT2TextTokenizer

OUR_CODE_DIR = Path(__file__).resolve().parents[2]  # where modeling_smolm135.py and the files it imports live
TRUST_FLAG = "--trust-remote-code"
# the end of every script's help for TRUST_FLAG
TRUST_ADVICE = "only for authors you trust; smolm135's own exports need no such permission"
HF_KIND = "Hugging Face model"
SMOLM135_MODEL_TYPE = "smolm135"  # modeling_smolm135.SmoLM135Config.model_type, read here without importing it


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and what readers ask of it. `model` is the native SmoLM135_Model with our tokenizer
    (GPT2TextTokenizer or JsonTokenizer), except for an architecture only transformers can run: then a
    transformers model with its transformers tokenizer."""

    source: str  # the spec as given
    description: str  # where the weights came from, for the console
    model: object
    tokenizer: object
    kind: str  # what it was read from, in words: "native checkpoint", "Hugging Face model" or "GGUF model"
    facts: TrainingFacts = TrainingFacts()  # what the checkpoint or training_info.json says

    @property
    def is_native(self) -> bool:
        return isinstance(self.model, SmoLM135_Model)


# ------------------------------------------------------------------ the trust policy


def foreign_code(folder: Path) -> list[str]:
    """The Python files in `folder` that differ from the file of the same name this project ships (all of
    them, if it ships none); empty for a folder without code and for our own exports."""
    foreign = []
    for path in sorted(Path(folder).rglob("*.py")):
        relative = path.relative_to(folder)
        shipped = OUR_CODE_DIR / relative
        if not (shipped.is_file() and shipped.read_bytes() == path.read_bytes()):
            foreign.append(relative.as_posix())
    return foreign


def auto_map_references(config: dict) -> list[str]:
    """Every `module.Class` (or `repo--module.Class`) that config.json's auto_map names."""
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return [] if auto_map is None else [repr(auto_map)]
    values = [item for value in auto_map.values() for item in (value if isinstance(value, list) else [value])]
    return [str(value) for value in values if value is not None]


def code_problem(folder: Path, config: dict) -> str | None:
    """Why the folder's code is not ours to run without asking, as a phrase; None when it runs none but ours."""
    elsewhere = [ref for ref in auto_map_references(config) if "--" in ref or not ref.count(".")]
    if elsewhere:
        return f"its config.json names code from elsewhere ({elsewhere[0]})"
    missing = sorted({ref.rsplit(".", 1)[0] + ".py" for ref in auto_map_references(config)}
                     - {path.name for path in folder.glob("*.py")})
    if missing:
        return f"its config.json names code the folder does not hold ({missing[0]})"
    foreign = foreign_code(folder)
    if foreign:
        return f"its code ({', '.join(foreign[:3])}) is not this project's"
    return None


def trust_refusal(source: str, problem: str) -> UserError:
    return UserError(f"{source} would run Python code that is not this project's ({problem}): name it and pass "
                     f"{TRUST_FLAG} to run it, only if you trust its author")


# ------------------------------------------------------------------ the loader


def load_model(spec: str, trust_remote_code: bool = False, named: bool = True,
               native_only: bool = False) -> LoadedModel:
    """Any model spec -> a LoadedModel on the CPU. `named`: the user gave this spec (a folder found by searching
    is not, and its code never runs). `native_only`: the caller needs the native model (to train or convert
    it); an architecture only transformers can run is refused instead of loaded."""
    spec = str(spec)
    if spec in BUILTIN_MODELS or spec.endswith(".gguf"):
        return native_from_pretrained(spec, load_pretrained(spec), "GGUF model")
    path = Path(spec).expanduser()
    if path.is_file():
        checkpoint = load_checkpoint(path)
        return LoadedModel(spec, f"the checkpoint {spec}", checkpoint.build_model(), checkpoint.build_tokenizer(),
                           "native checkpoint", checkpoint.facts)
    if path.is_dir():
        return load_folder(path, spec, trust_remote_code, named, native_only)
    if HUB_ID.match(spec) and not spec.endswith((".pt", ".pth", ".bin")):
        return load_folder(download_from_hub(spec), spec, trust_remote_code, named, native_only,
                           description=f"{spec} from the Hugging Face Hub")
    raise UserError(f"model {spec} does not exist: give a training checkpoint (.pt), a Hugging Face model folder "
                    f"or Hub id, a .gguf file or {', '.join(BUILTIN_MODELS)}")


def native_from_pretrained(spec: str, pretrained, kind: str, facts: TrainingFacts = TrainingFacts()) -> LoadedModel:
    return LoadedModel(spec, pretrained.description, pretrained.build_model().eval(), pretrained.tokenizer, kind, facts)


def read_config(folder: Path) -> dict:
    """config.json as a dict, or one line saying why it is not a usable one."""
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} has no config.json, so it is not a Hugging Face model folder: give one, or a "
                        f"training checkpoint (.pt)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path} is not valid JSON ({str(error).splitlines()[0]}): the folder is damaged; "
                        f"download or export it again") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a {type(config).__name__}, not a JSON object: the folder is damaged; "
                        f"download or export it again")
    return config


def load_folder(folder: Path, source: str, trust_remote_code: bool = False, named: bool = True,
                native_only: bool = False, description: str | None = None) -> LoadedModel:
    """A Hugging Face folder: ours and Llama ones become the native model (none of their code runs); any
    other runs through transformers, with the folder's own code only as the trust policy allows."""
    config = read_config(folder)
    problem = code_problem(folder, config)
    trusted = trust_remote_code and named
    if problem and not trusted:
        raise trust_refusal(source, problem)
    check_floating_point_weights(folder, source)
    facts = read_training_info(folder)
    model_type = config.get("model_type")
    if problem and not native_only:  # the user vouched for code that may not be ours: it, not ours, runs
        return load_with_transformers(folder, source, facts, trust_remote_code=True)
    if model_type == SMOLM135_MODEL_TYPE:
        return load_smolm135_folder(folder, source, facts, description)
    if model_type == "llama":
        return native_from_pretrained(source, load_hf_folder(folder, description), HF_KIND, facts)
    if native_only:
        raise UserError(f"{source} is a {model_type!r} model, which only transformers can run: only smolm135 and "
                        f"Llama-layout models (LlamaForCausalLM) become native models")
    return load_with_transformers(folder, source, facts, trust_remote_code=False)


def check_floating_point_weights(folder: Path, source: str) -> None:
    """Refuse integer tensors in the safetensors files (read from their headers alone): transformers would copy
    them into the float parameters as they are, and score or serve numbers that were never weights."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, "pt") as weights:
                kinds = {name: weights.get_slice(name).get_dtype() for name in weights.keys()}
        except (SafetensorError, OSError):
            continue  # a torn file: the reader that loads it says so, in its own words
        integer = [name for name, kind in kinds.items() if not kind.startswith(("F", "BF"))]
        if integer:
            raise UserError(f"{source}: {path.name} holds {kinds[integer[0]]} numbers where a model has floating-point "
                            f"weights (e.g. {integer[0]}): the file is damaged or not a model; download or export it "
                            f"again")


def load_smolm135_folder(folder: Path, source: str, facts: TrainingFacts, description: str | None) -> LoadedModel:
    """Our own export, read by this project's SmoLM135ForCausalLM (not the folder's copy of it)."""
    import torch

    from modeling_smolm135 import SmoLM135ForCausalLM

    try:
        native = SmoLM135ForCausalLM.from_pretrained(folder, dtype=torch.float32).model.eval()
    except Exception as error:  # transformers raises many types for a torn config or weights file
        raise UserError(f"{folder} is not a readable smolm135 or Llama export ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}): export it again") from None
    return LoadedModel(source, description or source, native, folder_tokenizer(folder, native, source), HF_KIND,
                       facts)


def folder_tokenizer(folder: Path, native: SmoLM135_Model, source: str):
    """GPT-2's tokenizer for a folder that holds GPT-2's (as convert_to_hf.py writes it for a model trained
    with it), else the folder's own tokenizer.json."""
    from smolm135.interop.pretrained import tokenizer_from_transformers

    tokenizer_config = folder / "tokenizer_config.json"
    try:
        tokenizer_class = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("tokenizer_class", "")
    except (OSError, ValueError, AttributeError):
        tokenizer_class = ""
    if str(tokenizer_class).startswith("GPT2") or not (folder / "tokenizer.json").is_file():
        return GPT2TextTokenizer()
    from transformers import AutoTokenizer

    return tokenizer_from_transformers(AutoTokenizer.from_pretrained(folder, local_files_only=True), native.config,
                                       source)


def load_with_transformers(folder: Path, source: str, facts: TrainingFacts, trust_remote_code: bool) -> LoadedModel:
    """A model only transformers can run (another architecture, or code the user chose to trust)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, OverflowError, RuntimeError) as error:
        if "trust_remote_code" in str(error):  # code our check did not see (a tokenizer's auto_map, say)
            raise trust_refusal(source, "transformers asks to run the folder's code") from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load the Hugging Face model in {source}: {first_line}") from None
    return LoadedModel(source, source, model.eval(), tokenizer, HF_KIND, facts)
