"""Exports to Hugging Face folders and GGUF files, their checks, the Hub push, and the way back (the script
`convert_to_hf.py` runs `main`)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from modeling_smolm135 import SmoLM135Config, SmoLM135ForCausalLM
from smollm135_model import PRESETS, SAMPLING, ModelConfig, SmoLM135_Model, clean_state_dict
from smolm135.checkpoint import (
    TRAINED_MODEL_GLOBS,
    TRAINING,
    TRAINING_INFO_FILE,
    Checkpoint,
    TrainingFacts,
    load_checkpoint,
    newest_trained_model,
    record_export_files,
    recorded_export_files,
    run_timestamp,
    save_atomic,
    write_training_info,
)
from smolm135.runtime.disk import (
    WRITE_ERRORS,
    give_safetensors_default_mode,
    left_by_dead_writer,
    make_room,
    remove_interrupted_writes,
    temporary_path,
    write_failure,
)
from smolm135.errors import CommandLineParser, UserError, path_argument
from smolm135.runtime.fresh_process import run_fresh
from smolm135.interop.export_gguf import (
    GGUF_TYPES,
    GREEDY_CHECKED_TYPES,
    GREEDY_STEPS,
    RELATIVE_TOLERANCE,
    gguf_file_name,
    greedy_departures,
    native_greedy,
    reload_gguf,
    write_gguf,
)
from smolm135.interop.export_llama import (
    llama_config,
    llama_model_from_native,
    reload_in_fresh_process,
    save_llama_model,
)
from smolm135.interop.export_peft import save_peft_adapter
from smolm135.interop.llama_names import check_rotary
from smolm135.loss_plot import plot_losses
from smolm135.interop.model_card import DEFAULT_LICENSE, check_license, render_model_card
from smolm135.interop.loading import TRUST_ADVICE, TRUST_FLAG, load_model
from smolm135.data.tokenizer import (
    END_OF_TEXT,
    GPT2TextTokenizer,
    JsonTokenizer,
    get_tokenizer,
    gpt2_bpe_files,
    start_token_id,
)

MAX_LOGIT_DIFFERENCE = 1e-4  # fp32 on both sides: the same kernels on the same weights
VERIFY_TEXT = "To be, or not to be: that is the question. Ünïcödé ✓ 🤖 def f(x):\n\treturn x ** 2\n"
# Recipe fields that name places on the training machine: training_info.json (which --push-to-hub publishes)
# keeps only their last component, the file or folder name.
LOCAL_PATH_FIELDS = ("data", "out_dir", "init_from", "resume")
EXPORT_OVERHEAD_BYTES = 10_000_000  # tokenizer, code, card and plot beside the weights


# ------------------------------------------------------------------ native side


def find_newest_model(search_dir: str | os.PathLike = ".") -> Path:
    """The newest final or continued model under `search_dir`, by the timestamp in its name, then its mtime."""
    newest = newest_trained_model([Path(search_dir)])
    if newest is None:
        raise UserError(f"no trained model under {Path(search_dir).resolve()} ({' or '.join(TRAINED_MODEL_GLOBS)}): "
                        f"train one first (python Model_smollm135_trainer.py --preset tiny ...), or pass --checkpoint PATH")
    return newest


def preset_of(model_config: ModelConfig) -> str | None:
    return next((name for name, preset in PRESETS.items() if preset == model_config), None)


def default_output_dir(model_config: ModelConfig) -> Path:
    """smolm135-hf for the full preset, smolm135-<preset>-hf for the others, smolm135-custom-hf otherwise."""
    preset = preset_of(model_config) or "custom"
    name = preset if preset.startswith("smolm135") else f"smolm135-{preset}"
    return Path(f"{name}-hf")


# ------------------------------------------------------------------ the Hugging Face folder


def build_hf_tokenizer(model_max_length: int = PRESETS["smolm135"].block_size, tokenizer=None):
    """The model's tokenizer as a transformers fast tokenizer: a pretrained model's own `tokenizer.json` (with
    its special tokens and chat template) when `tokenizer` is one, else GPT-2's from the same offline BPE files
    as tiktoken's (ids are checked against it in tests).

    transformers 5 silently builds an *empty* tokenizer from `vocab_file=`/`merges_file=`; `vocab=`/`merges=`
    with the paths is the form that loads the files.
    """
    if isinstance(tokenizer, JsonTokenizer):
        return build_hf_json_tokenizer(tokenizer, model_max_length)
    from transformers import GPT2TokenizerFast

    encoder_json, vocab_bpe = gpt2_bpe_files()
    tokenizer = GPT2TokenizerFast(vocab=str(encoder_json), merges=str(vocab_bpe), bos_token=END_OF_TEXT,
                                  eos_token=END_OF_TEXT, unk_token=END_OF_TEXT,
                                  pad_token=END_OF_TEXT,  # GPT-2 has no pad token; batched generation needs one
                                  padding_side="left",  # decoder-only: new tokens follow each prompt's last token
                                  model_max_length=model_max_length)
    if len(tokenizer) != get_tokenizer().n_vocab:
        raise RuntimeError(f"the Hugging Face tokenizer has {len(tokenizer)} tokens instead of GPT-2's "
                           f"{get_tokenizer().n_vocab:,}")
    return tokenizer


def build_hf_json_tokenizer(tokenizer: JsonTokenizer, model_max_length: int):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.tokenizer_json), bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token, pad_token=tokenizer.eos_token,  # no pad token of its own: batching needs one
        padding_side="left", model_max_length=model_max_length)
    if tokenizer.chat_template:
        hf_tokenizer.chat_template = tokenizer.chat_template
    return hf_tokenizer


def build_generation_config(config, end_token_ids: tuple[int, ...] = ()):
    """The exported `generation_config.json`: the native `generate`'s sampling defaults, and the special tokens.

    It sets no length: transformers lets a `max_new_tokens` stored here override the `max_length` a caller
    passes (evaluation harnesses pass one), so the caller's length, or transformers' own default, applies.
    """
    from transformers import GenerationConfig

    # generation stops at every end token the tokenizer has (a chat model ends its turn with its own)
    eos = list(end_token_ids) if len(end_token_ids) > 1 else config.eos_token_id
    return GenerationConfig(do_sample=True, temperature=SAMPLING.temperature, top_k=SAMPLING.top_k,
                            top_p=SAMPLING.top_p, bos_token_id=config.bos_token_id,
                            eos_token_id=eos, pad_token_id=config.pad_token_id)


def is_rotary(model_config: ModelConfig) -> bool:
    """Rotary models have the Llama layout and export as a plain LlamaForCausalLM; learned positions need
    the remote code of modeling_smolm135.py."""
    return model_config.position_embedding == "rotary"


def special_token_ids(tokenizer=None) -> dict:
    """bos/eos/pad ids of the transformers config: the model's own tokenizer's, or GPT-2's <|endoftext|> (as
    SmoLM135Config's defaults) for the GPT-2 encoding."""
    if isinstance(tokenizer, JsonTokenizer):
        return {"bos_token_id": start_token_id(tokenizer), "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.eos_token_id}
    config = SmoLM135Config()
    return {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id}


def hf_model_from_native(native: SmoLM135_Model, tokenizer=None) -> SmoLM135ForCausalLM:
    hf_model = SmoLM135ForCausalLM(SmoLM135Config.from_model_config(native.config, **special_token_ids(tokenizer)))
    hf_model.model.load_state_dict(native.state_dict())
    return hf_model.eval()


def check_output_dir(output_dir: Path) -> None:
    """Refuse to write into a folder that holds something other than a previous smolm135 export."""
    for folder in [output_dir, *output_dir.parents]:
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--output-dir {output_dir}: {folder} is a file, not a folder; choose a folder name")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        try:
            model_type = json.loads((output_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            model_type = None
        if model_type not in (SmoLM135Config.model_type, "llama") or not (output_dir / TRAINING_INFO_FILE).is_file():
            raise UserError(f"--output-dir {output_dir} is not empty and is not a smolm135 export; choose a new "
                            f"or empty folder so nothing in it is overwritten")


def public_facts(facts: TrainingFacts) -> TrainingFacts:
    """The facts an export publishes: the recipe's local paths cut to their file or folder names."""
    if not isinstance(facts.train_config, dict):
        return facts
    recipe = {key: (Path(value).name if key in LOCAL_PATH_FIELDS and isinstance(value, str) else value)
              for key, value in facts.train_config.items()}
    return replace(facts, train_config=recipe)


@contextlib.contextmanager
def transformers_progress_bars_off():
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def write_hf_folder(native: SmoLM135_Model, facts: TrainingFacts, output_dir: Path, model_id: str | None = None,
                    license: str = DEFAULT_LICENSE, gguf_files: tuple[str, ...] = (), tokenizer=None,
                    name: str | None = None) -> Path:
    """Write weights, config, code, tokenizer (the model's own, by default GPT-2's), generation config,
    training info, loss plot and model card (which names the `gguf_files` written beside them) straight into
    `output_dir` (`export` writes into a temporary folder and renames it). `name` titles the card (default:
    the last part of `model_id`, else the folder's name)."""
    check_license(license)
    check_output_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    end_tokens = tuple(getattr(tokenizer, "end_token_ids", ()))
    # one progress bar for one shard says nothing, and it would end up in the one-line error of a failed write
    with transformers_progress_bars_off():
        if is_rotary(native.config):  # the Llama layout: a plain LlamaForCausalLM, no code in the folder
            config = llama_config(native.config, **special_token_ids(tokenizer))
            save_llama_model(native, output_dir, build_generation_config(config, end_tokens), config)
        else:
            hf_model = hf_model_from_native(native, tokenizer)
            hf_model.generation_config = build_generation_config(hf_model.config, end_tokens)
            # copies the modeling/configuration files and the smollm135_model.py they import into the folder,
            # and writes auto_map into config.json, so the folder loads with no file of this repository on the path
            SmoLM135Config.register_for_auto_class()
            SmoLM135ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
            hf_model.save_pretrained(output_dir)
    give_safetensors_default_mode(output_dir)
    # a chat template goes into tokenizer_config.json, where readers older than transformers' own
    # chat_template.jinja (which it writes by default) look for it too
    build_hf_tokenizer(native.config.block_size, tokenizer).save_pretrained(output_dir, save_jinja_files=False)

    write_training_info(output_dir, public_facts(facts))
    history = facts.history or {"train": [], "val": []}
    has_plot = bool(history.get("train") or history.get("val"))
    name = name or (model_id.split("/")[-1] if model_id else output_dir.resolve().name)
    (output_dir / "loss.png").unlink(missing_ok=True)  # a previous export's plot would describe another run
    if has_plot:
        plot_losses(history, output_dir / "loss.png", f"{name} on {facts.data_name or 'its data'}")
    write_model_card(native, facts, output_dir, model_id, name, license, gguf_files, tokenizer)
    return output_dir


def write_model_card(native: SmoLM135_Model, facts: TrainingFacts, output_dir: Path, model_id: str | None,
                     name: str, license: str, gguf_files: tuple[str, ...], tokenizer) -> None:
    """README.md, titled `name`, naming the `gguf_files` beside it and showing loss.png if the folder has it."""
    card = render_model_card(native.config, native.num_parameters()["total"], facts, model_id or name, name,
                             license, (output_dir / "loss.png").is_file(), gguf_files, tokenizer)
    (output_dir / "README.md").write_text(card, encoding="utf-8")


# ------------------------------------------------------------------ verification in a fresh process

# Runs with the working directory in a temporary folder and no PYTHONPATH: only the exported folder's code
# can be imported, exactly as for a user who downloaded it.
_VERIFY_SCRIPT = r"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out_path, folder, text = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(input_ids).logits
torch.save({"input_ids": input_ids[0].tolist(), "logits": logits[0], "model_class": type(model).__module__}, out_path)
"""


@dataclass(frozen=True)
class Verification:
    max_abs_difference: float
    n_tokens: int
    model_class: str  # the module transformers loaded the model from (transformers_modules.<folder>...)


def check_logits_match(expected: torch.Tensor, actual: torch.Tensor, limit: float = MAX_LOGIT_DIFFERENCE) -> float:
    """Max absolute difference of two (T, V) logit tensors; UserError above `limit`."""
    if expected.shape != actual.shape:
        raise UserError(f"the exported model returns logits of shape {tuple(actual.shape)}, the native model "
                        f"{tuple(expected.shape)}: the export is broken, do not publish it")
    difference = (expected.float() - actual.float()).abs().max().item()
    if not difference <= limit:
        raise UserError(f"the exported model's logits differ from the native model's by up to {difference:.3g} "
                        f"(limit {limit:g}): the export is broken, do not publish it")
    return difference


def verify_hf_folder(folder: Path, native: SmoLM135_Model, text: str = VERIFY_TEXT, tokenizer=None) -> Verification:
    """Reload `folder` through the Auto classes in a fresh process and compare with `native` (fp32); the
    exported tokenizer must encode `text` as the model's own (`tokenizer`, by default GPT-2's) does."""
    expected_ids = (tokenizer or GPT2TextTokenizer()).encode(text)
    loaded = (reload_in_fresh_process(folder, text) if is_rotary(native.config)
              else _reload_with_remote_code(folder, text))
    if loaded["input_ids"] != expected_ids:
        raise UserError(f"the exported tokenizer in {folder} encodes the check text differently from the "
                        f"model's own tokenizer: the export is broken, do not publish it")
    with torch.no_grad():
        expected_logits, _ = native(torch.tensor([expected_ids]))  # (1, T, V)
    difference = check_logits_match(expected_logits[0], loaded["logits"])
    return Verification(difference, len(expected_ids), loaded["model_class"])


def _reload_with_remote_code(folder: Path, text: str) -> dict:
    return run_fresh(_VERIFY_SCRIPT, [str(folder.resolve()), text],
                     lambda output: f"the exported folder {folder} did not load through AutoModelForCausalLM in a "
                                    "fresh process")


# ------------------------------------------------------------------ writing the folder whole, or not at all

_STAGING, _REPLACED = "partial", "replaced"  # the kinds of temporary folder beside an export's target


def tidy_interrupted_exports(folder: Path) -> None:
    """Undo what killed exports left in `folder`, whatever their targets there: a partial folder is deleted;
    a previous export one had moved aside is put back when nothing took its place, else what the user had
    added to it is carried over to the export that did."""
    remove_interrupted_writes(folder, kind=_STAGING)
    for leftover in sorted(folder.iterdir()) if folder.is_dir() else []:
        target = left_by_dead_writer(leftover, _REPLACED)
        if target is None or not leftover.is_dir():
            continue
        if not target.exists():
            os.replace(leftover, target)
            continue
        if target.is_dir():
            carry_over_added_files(leftover, target)
        shutil.rmtree(leftover, ignore_errors=True)


def carry_over_added_files(previous: Path, export_dir: Path) -> list[str]:
    """Move what the user had added to the `previous` export into the new `export_dir` that replaces it, and
    return their names: everything the previous export did not list as its own (an export from before that
    list: everything but its GGUF files) and the new one does not write."""
    ours = recorded_export_files(previous)
    if ours is None:
        ours = {gguf_file_name(export_dir.resolve().name, gguf_type) for gguf_type in GGUF_TYPES}
    added = sorted(entry.name for entry in previous.iterdir()
                   if entry.name not in ours and not (export_dir / entry.name).exists())
    for name in added:
        os.replace(previous / name, export_dir / name)
    return added


def export(native: SmoLM135_Model, facts: TrainingFacts, output_dir: Path, model_id: str | None = None,
           license: str = DEFAULT_LICENSE, gguf_types: tuple[str, ...] = (), tokenizer=None,
           say=print) -> Verification:
    """Write the folder (and a .gguf in it for each of `gguf_types`) beside `output_dir`, verify it there, then
    rename it into place: a failure (a full disk, a kill, a broken folder) leaves no partial folder and any
    previous export as it was. Files the user had added to a previous export are kept. A .gguf that fails its
    check is removed and named in a UserError raised after the folder and the files that passed are in place."""
    check_license(license)
    check_output_dir(output_dir)
    tidy_interrupted_exports(output_dir.parent)
    staging, replaced = temporary_path(output_dir, _STAGING), temporary_path(output_dir, _REPLACED)
    gguf_types = tuple(dict.fromkeys(gguf_types))
    gguf_files = tuple(gguf_file_name(output_dir.resolve().name, gguf_type) for gguf_type in gguf_types)
    needed = 4 * native.num_parameters()["total"] * (1 + len(gguf_types)) + EXPORT_OVERHEAD_BYTES  # float32 at most
    name = model_id.split("/")[-1] if model_id else output_dir.resolve().name
    failed: dict[Path, str] = {}
    try:
        write_hf_folder(native, facts, staging, model_id, license, gguf_files, tokenizer, name)
        check = verify_hf_folder(staging, native, tokenizer=tokenizer)
        if gguf_types:
            ggufs = export_verified_ggufs(native, [staging / file for file in gguf_files], gguf_types, tokenizer)
            for sentence in ggufs.verified:
                say(sentence)
            failed = ggufs.failed
            for path in failed:
                path.unlink()
            if failed:  # the card names the files that are there
                passed = tuple(file for file in gguf_files if (staging / file).exists())
                write_model_card(native, facts, staging, model_id, name, license, passed, tokenizer)
        record_export_files(staging)
        if output_dir.exists():
            os.replace(output_dir, replaced)  # a previous export: moved aside until the new one is in place
        os.replace(staging, output_dir)
    except WRITE_ERRORS as error:
        raise UserError(write_failure(f"the export {output_dir}", output_dir.parent, error, needed)
                        + f"; nothing was changed there: {make_room(error, 'another --output-dir')} and run "
                          "again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if replaced.exists():
        kept = carry_over_added_files(replaced, output_dir)
        shutil.rmtree(replaced, ignore_errors=True)
        if kept:
            say(f"kept what you had added to {output_dir} (this export does not write them): {', '.join(kept)}")
    if failed:
        passed = [file for file in gguf_files if (output_dir / file).exists()]
        raise UserError(f"{'; '.join(failed.values())}; removed {', '.join(path.name for path in failed)}, and "
                        f"kept {output_dir}, which passed its checks" + (f", with {', '.join(passed)}, which "
                                                                         f"passed theirs" if passed else ""))
    return check


def convert(checkpoint_path: str | os.PathLike, output_dir: str | os.PathLike | None = None,
            model_id: str | None = None, license: str = DEFAULT_LICENSE, say=print,
            gguf_types: tuple[str, ...] = (), peft_adapter: str | os.PathLike | None = None) -> Path:
    """Export the checkpoint to a verified Hugging Face folder, and to one verified .gguf file in it for each of
    `gguf_types`; returns the folder. A LoRA checkpoint is exported with its adapters merged, and with
    `peft_adapter` its adapters are also written there as a peft folder for the base model."""
    check_license(license)
    if output_dir is not None:
        check_output_dir(Path(output_dir))
    if peft_adapter is not None:
        check_output_dir(Path(peft_adapter))
    checkpoint = load_checkpoint(checkpoint_path)
    if peft_adapter is not None:
        check_has_adapters(checkpoint)
    native = checkpoint.build_model()  # a LoRA checkpoint's adapters merged
    if gguf_types:
        check_rotary(native.config, "GGUF export")
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(native.config)
    say(f"converting {checkpoint_path} ({native.num_parameters()['total']:,} parameters, step "
        f"{checkpoint.progress.step}) into {output_dir}")
    tokenizer = checkpoint.build_tokenizer()
    check = export(native, checkpoint.facts, output_dir, model_id, license, tuple(gguf_types), tokenizer, say)
    how = ("as a plain LlamaForCausalLM (no remote code) and in pipeline('text-generation')"
           if is_rotary(native.config) else "through AutoModelForCausalLM")
    say(f"verified: {output_dir} reloads {how} in a fresh offline process; max abs logit "
        f"difference to the native model {check.max_abs_difference:.3g} over {check.n_tokens} tokens "
        f"(limit {MAX_LOGIT_DIFFERENCE:g}); tokenizer ids equal the model's own tokenizer's")
    if peft_adapter is not None:
        write_peft_adapter(checkpoint, native, Path(peft_adapter), say)
    return output_dir


@dataclass(frozen=True)
class GGUFChecks:
    verified: list[str]  # for each file that passed: a sentence saying what was checked
    failed: dict[Path, str]  # each file that did not: why


def check_has_adapters(checkpoint: Checkpoint) -> None:
    if checkpoint.lora is None:
        raise UserError(f"--peft-adapter: {checkpoint.source} has no LoRA adapters (it was trained without "
                        f"--lora-rank); its export alone is the whole model")
    check_rotary(ModelConfig.from_dict(checkpoint.model_config), "a peft adapter for transformers' Llama")


def write_peft_adapter(checkpoint: Checkpoint, merged: SmoLM135_Model, folder: Path, say=print) -> Path:
    """The checkpoint's adapters as a peft folder for transformers' Llama of its base model, checked: the base
    with the adapter loaded by peft gives the merged model's logits."""
    base = SmoLM135_Model(ModelConfig.from_dict(checkpoint.model_config))
    base.load_state_dict(clean_state_dict(checkpoint.model_state_dict))  # the base weights, unmerged
    save_peft_adapter(base.eval(), checkpoint.lora, folder)
    difference = check_logits_match(*peft_adapter_logits(base, merged, folder))
    say(f"wrote the LoRA adapters to {folder}: PeftModel.from_pretrained(<the base model as LlamaForCausalLM>, "
        f"\"{folder}\") gives the merged model's logits (max abs difference {difference:.3g})")
    return folder


def peft_adapter_logits(base: SmoLM135_Model, merged: SmoLM135_Model, folder: Path, length: int = 16):
    """(T, V) logits of the merged native model and of transformers' Llama of `base` with the adapter folder
    loaded by peft, for `length` tokens."""
    from peft import PeftModel

    input_ids = torch.arange(length).remainder(base.config.vocab_size)[None]  # (1, T)
    llama = llama_model_from_native(base, llama_config(base.config, None, None, None))
    adapted = PeftModel.from_pretrained(llama, str(folder)).eval()
    with torch.no_grad():
        return merged(input_ids)[0][0], adapted(input_ids).logits[0]


def export_verified_ggufs(native: SmoLM135_Model, paths: list[Path], gguf_types: tuple[str, ...],
                          tokenizer=None) -> GGUFChecks:
    """Write each of `paths` in its type, and read them back with transformers' GGUF loader along the native
    model's greedy continuation of the check text: the prompt's logits within the type's limit, and (at f32 and
    q8_0) each next token the native one up to near ties. A file that fails is named with why, not raised:
    `export` keeps the folder and the files that passed."""
    tokenizer = tokenizer or GPT2TextTokenizer()
    for path, gguf_type in zip(paths, gguf_types):
        write_gguf(native, tokenizer, path, gguf_type, path.stem)
    prompt = tokenizer.encode(VERIFY_TEXT)
    # both models are teacher-forced on the native greedy tokens: a near tie that one breaks the other way
    # changes that one step, not every step after it
    teacher_forced = prompt + native_greedy(native, prompt)[:-1]
    loaded = reload_gguf(paths, teacher_forced)
    with torch.no_grad():
        expected, _ = native(torch.tensor([teacher_forced]))  # (1, T + steps - 1, V)
    checks = GGUFChecks([], {})
    for path, gguf_type in zip(paths, gguf_types):
        try:
            checks.verified.append(check_gguf(path, gguf_type, expected[0], loaded[path.name], len(prompt)))
        except UserError as error:
            checks.failed[path] = f"{path.name}: {error}"
    return checks


def check_gguf(path: Path, gguf_type: str, expected: torch.Tensor, loaded: dict, n_prompt: int) -> str:
    """One file's check against the native (T + steps - 1, V) logits `expected` (see export_verified_ggufs);
    UserError saying what failed."""
    if "error" in loaded:
        raise UserError(f"it did not load through transformers' GGUF loader ({loaded['error']}): the export is "
                        f"broken, do not publish it")
    limit = max(MAX_LOGIT_DIFFERENCE, RELATIVE_TOLERANCE[gguf_type] * expected[:n_prompt].abs().max().item())
    difference = check_logits_match(expected[:n_prompt], loaded["logits"][:n_prompt], limit)
    if gguf_type not in GREEDY_CHECKED_TYPES:
        return (f"verified: {path.name} ({path.stat().st_size:,} bytes) reads back through transformers' GGUF "
                f"loader; max abs logit difference {difference:.3g} (limit {limit:.3g})")
    rows, chosen = expected[n_prompt - 1:], loaded["logits"][n_prompt - 1:].argmax(dim=-1)  # (steps, V), (steps,)
    departures = greedy_departures(rows, chosen.tolist(), limit)
    if departures:
        step, shortfall = departures[0]
        raise UserError(f"greedy decoding through transformers' GGUF loader picks, at token {step + 1} of "
                        f"{GREEDY_STEPS}, one the native model scores {shortfall:.3g} below its best (more than "
                        f"the limit {limit:.3g}): the export is broken, do not publish it")
    near_ties = int((chosen != rows.argmax(dim=-1)).sum())
    ties = f" (up to {near_ties} near ties within the limit)" if near_ties else ""
    return (f"verified: {path.name} ({path.stat().st_size:,} bytes) reads back through transformers' GGUF "
            f"loader; max abs logit difference {difference:.3g} (limit {limit:.3g}); the same {GREEDY_STEPS} "
            f"greedy tokens{ties}")


# ------------------------------------------------------------------ the Hub


def hub_token(repo_id: str, token: str | None, consequence: str) -> str:
    """`token`, else HF_TOKEN, else a saved `hf auth login`; UserError naming the three ways, then
    `consequence` (what became of the export), when there is none."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise UserError(f"--push-to-hub {repo_id} needs a Hugging Face token with write access: pass --token, set "
                        f"HF_TOKEN or run `hf auth login` (tokens: https://huggingface.co/settings/tokens); "
                        f"{consequence}")
    return token


DEFAULT_COMMIT_MESSAGE = "Upload smolm135 model"  # the Hub commit of an upload, unless another message is given


def push_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = DEFAULT_COMMIT_MESSAGE, api=None) -> str:
    """Create the model repository if needed and upload `folder`, with the .gguf files an export wrote in it;
    returns the repository URL.

    `api` is an `HfApi`-like object (tests pass a recorder). The token comes from `token`, else HF_TOKEN,
    else a saved `hf auth login`.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, HTTPError

    folder = Path(folder)
    token = hub_token(repo_id, token, f"the folder {folder} is complete and can be pushed later")
    api = api if api is not None else HfApi(token=token)
    try:
        url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True, token=token)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=commit_message, token=token)
    except HFValidationError as error:
        raise UserError(f"--push-to-hub {repo_id!r} is not a valid repository id ({error}); use name or "
                        f"owner/name") from None
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        hint = "check that the token has write access to it" if status in (401, 403) else "see the message"
        raise UserError(f"the Hugging Face Hub refused the upload to {repo_id} (HTTP {status}): {hint}; the "
                        f"folder {folder} is complete and can be pushed later") from None
    except (HTTPError, OSError) as error:  # no network, DNS failure, HF_HUB_OFFLINE=1
        raise UserError(f"could not reach the Hugging Face Hub to push {repo_id} ({type(error).__name__}): check "
                        f"the network and run again; the folder {folder} is complete and can be pushed "
                        f"later") from None
    return str(url)


# ------------------------------------------------------------------ back to a native checkpoint


def native_from_hf_folder(folder: str | os.PathLike,
                          trust_remote_code: bool = False) -> tuple[SmoLM135_Model, Checkpoint]:
    """An exported folder (ours, or any Llama model the native config can express) -> (native model, native
    checkpoint), to continue training or sample natively; read by smolm135.interop.loading, under its trust policy."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--from-hf {folder} is not a folder: pass a folder written by convert_to_hf.py")
    loaded = load_model(str(folder), trust_remote_code=trust_remote_code, native_only=True)
    record = loaded.tokenizer.to_record() if isinstance(loaded.tokenizer, JsonTokenizer) else None
    checkpoint = Checkpoint.from_facts(loaded.model, loaded.facts, converted_from=str(folder.resolve()),
                                       tokenizer=record)
    return loaded.model, checkpoint


def hf_folder_to_checkpoint(folder: str | os.PathLike, output: str | os.PathLike | None = None,
                            search_dir: str | os.PathLike = ".", trust_remote_code: bool = False) -> Path:
    """Write the folder as a native checkpoint; by default models/final_model_<timestamp>.pt under `search_dir`,
    where continue_training.py looks first."""
    _, checkpoint = native_from_hf_folder(folder, trust_remote_code)
    if output is None:
        output = TRAINING.under(search_dir).final_path(run_timestamp())
    return save_atomic(checkpoint, output)


# ------------------------------------------------------------------ command line


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(__doc__)
    parser.add_argument("--checkpoint", type=path_argument,
                        help="native checkpoint to convert (default: the newest final or continued model under "
                             "--search-dir)")
    parser.add_argument("--search-dir", type=path_argument, default=".",
                        help=f"folder holding {' and '.join(TRAINED_MODEL_GLOBS)}")
    parser.add_argument("--output-dir", type=path_argument,
                        help="folder to write (default: smolm135-<preset>-hf, smolm135-hf for the full preset)")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="license in the model card's metadata")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this Hub repository "
                                                                 "(name or owner/name), creating it if needed")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--token", help="Hugging Face token with write access (default: HF_TOKEN or the saved "
                                        "`hf auth login`)")
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE, help="commit message of the upload")
    parser.add_argument("--gguf", nargs="+", choices=GGUF_TYPES, default=[], metavar="TYPE",
                        help=f"also write <folder>/<folder>-TYPE.gguf for llama.cpp and ollama (rotary models; "
                             f"TYPE: {', '.join(GGUF_TYPES)})")
    parser.add_argument("--peft-adapter", type=path_argument, metavar="DIR",
                        help="a LoRA checkpoint: also write its adapters as a peft folder, for "
                             "PeftModel.from_pretrained on transformers' Llama of the base model (the export itself "
                             "holds the adapters merged)")
    parser.add_argument("--from-hf", type=path_argument, metavar="FOLDER",
                        help="convert the other way: an exported folder to a native checkpoint")
    parser.add_argument("--output", type=path_argument,
                        help=f"with --from-hf: checkpoint to write (default: "
                             f"<search-dir>/{TRAINING.final_glob.replace('*', '<timestamp>')})")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help=f"with --from-hf: read a folder whose Python code is not this project's ({TRUST_ADVICE})")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    if args.from_hf:
        if args.push_to_hub or args.checkpoint or args.gguf:
            raise UserError("--from-hf converts a folder back to a checkpoint; it does not combine with "
                            "--checkpoint, --push-to-hub or --gguf")
        path = hf_folder_to_checkpoint(args.from_hf, args.output, args.search_dir, args.trust_remote_code)
        print(f"wrote native checkpoint {path}; train it further with: python continue_training.py "
              f"--checkpoint {path}")
        return path
    if args.trust_remote_code:
        raise UserError(f"{TRUST_FLAG} applies to the folder named by --from-hf: a checkpoint runs no code of its own")
    check_license(args.license)  # the flags first: a typo costs no search and no load
    if args.output_dir:
        check_output_dir(Path(args.output_dir))
    # a push with no token is known before the export, not after minutes of writing and checking it
    token = hub_token(args.push_to_hub, args.token, "nothing was exported") if args.push_to_hub else None
    checkpoint_path = Path(args.checkpoint) if args.checkpoint else find_newest_model(args.search_dir)
    folder = convert(checkpoint_path, args.output_dir, args.push_to_hub, args.license, gguf_types=tuple(args.gguf),
                     peft_adapter=args.peft_adapter)
    if args.push_to_hub:
        url = push_to_hub(folder, args.push_to_hub, token, args.private, args.commit_message)
        print(f"pushed {folder} to {url}")
    return folder
