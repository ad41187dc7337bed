"""The plain prompt refiner, called directly (no Ray): the template's exact output, negative prompts merged
rather than replaced, skipping, and the transformers backend on a tiny random language model built here."""

from pathlib import Path

import pytest

from deployments.prompt_refinement import PromptRefiner, _model_terms, append_terms
from tests.helpers import assert_names_files_in_models_dir

SEED_PROMPT = "beautiful sunset over mountains"


def _result(refiner: PromptRefiner, prompt: str, **parameters) -> dict:
    *progress, final = list(refiner.run(prompt, parameters))
    return final["result"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> PromptRefiner:
    return PromptRefiner(tmp_path_factory.mktemp("models"))  # the default backend needs no model


def test_the_template_refines_the_seeds_example_as_the_seed_shows(template):
    result = _result(template, SEED_PROMPT)
    assert result["prompt"] == "beautiful sunset over mountains, highly detailed, 8k"
    assert result["metadata"] == {"refined_prompt": result["prompt"], "refiner": "template"}
    assert result["parameters"] == {"negative_prompt": "blurry, low quality, distorted, watermark"}


def test_refining_a_refined_prompt_changes_nothing(template):
    once = _result(template, SEED_PROMPT)["prompt"]
    assert _result(template, once)["prompt"] == once


def test_the_callers_negative_prompt_is_kept_and_extended_not_replaced(template):
    result = _result(template, SEED_PROMPT, negative_prompt="people, Blurry")
    assert result["parameters"]["negative_prompt"] == "people, Blurry, low quality, distorted, watermark"


def test_refine_prompt_false_passes_the_prompt_and_parameters_through(template):
    events = list(template.run(SEED_PROMPT, {"refine_prompt": False, "negative_prompt": "people"}))
    assert events == [{"result": {"prompt": SEED_PROMPT,
                                  "metadata": {"refined_prompt": SEED_PROMPT, "refiner": "skipped"}}}]


def test_terms_are_appended_once_and_the_users_words_stay_first():
    assert append_terms("a cat, 8K", ["8k", "highly detailed", "highly detailed"]) == "a cat, 8K, highly detailed"
    assert append_terms("  ", ["blurry"]) == "blurry"


def test_a_language_models_answer_becomes_a_few_short_terms():
    answer = '"Golden hour lighting, dramatic clouds, wide angle."\nHere is why: because'
    assert _model_terms(answer) == ["Golden hour lighting", "dramatic clouds", "wide angle"]
    assert _model_terms("one two three four five six seven, ok") == ["ok"]
    assert _model_terms("") == []


DETAIL_WORDS = ["golden", "hour", "soft", "light", "dramatic", "clouds", "wide", "angle", ","]


def _tiny_language_model(folder: Path) -> None:
    """A randomly initialised Llama that speaks only DETAIL_WORDS, with a chat template, saved as a local model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({word: index for index, word in enumerate(["<unk>", "<s>", "</s>",
                                                                                  *DETAIL_WORDS])},
                                       unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s>{% endfor %}"
                               "{% if add_generation_prompt %}<s> assistant{% endif %}")
    torch.manual_seed(2)  # a seed whose random model answers with a few short comma-separated terms
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         bos_token_id=1, eos_token_id=2))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_the_transformers_backend_appends_the_models_details_to_the_users_words(tmp_path):
    _tiny_language_model(tmp_path / "tiny-lm")
    refiner = PromptRefiner(tmp_path, backend="transformers", model="tiny-lm", device="cpu")
    first, again = _result(refiner, SEED_PROMPT), _result(refiner, SEED_PROMPT)
    assert first == again  # greedy decoding: deterministic
    assert first["metadata"]["refiner"] == "transformers:tiny-lm"
    head, *details = first["prompt"].split(", ")
    assert head == SEED_PROMPT and 1 <= len(details) <= 6, first["prompt"]
    for term in details:  # what the model said, cut into short terms
        assert set(term.split()) <= set(DETAIL_WORDS) and len(term.split()) <= 6, term
    assert first["parameters"] == {"negative_prompt": "blurry, low quality, distorted, watermark"}


def test_misconfigured_backends_fail_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="use template"):
        PromptRefiner(tmp_path, backend="magic")
    with pytest.raises(FileNotFoundError, match="config.json") as missing:
        PromptRefiner(tmp_path, backend="transformers", model="absent")
    assert_names_files_in_models_dir(missing.value, tmp_path, "absent/config.json")
    with pytest.raises(FileNotFoundError, match="put the gguf file there") as missing:
        PromptRefiner(tmp_path, backend="gguf", model="absent.gguf")
    assert_names_files_in_models_dir(missing.value, tmp_path, "absent.gguf")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(RuntimeError, match="llama-cpp-python"):  # not installed here: the gguf path says so
        PromptRefiner(tmp_path, backend="gguf", model="model.gguf")
