"""The notebook's playground: prompt the model through your own handler, as the worker runs it.

    playground(handler)

starts vLLM once per kernel (a second call reuses it), then shows a prompt box, the
stream/normal switch, sampling controls, the answer as it streams, the extra fields the
handler yields, and the figures a person prompting a model looks at: time to first text,
tokens per second, tokens used, and why the answer stopped.
"""

from __future__ import annotations

import asyncio
import json
import time

FINISH_REASONS = {  # vLLM's finish reasons, said plainly
    "stop": "end of text or a stop string",
    "length": "max_tokens, or the context is full",
    "abort": "aborted",
}


def figures(started: float, first: float | None, ended: float, final: dict) -> str:
    """One line of figures for a finished answer: times are time.perf_counter() values;
    ``final`` is the fields of the last chunk (usage and finish_reason, if the handler
    yields them)."""
    parts = []
    if first is not None:
        parts.append(f"first text {first - started:.2f} s")
    usage = final.get("usage") or {}
    answer = usage.get("completion_tokens")
    if answer and first is not None and answer > 1 and ended > first:
        # The first token's time is the prompt's; the rest is decoding.
        parts.append(f"{(answer - 1) / (ended - first):.1f} tok/s")
    if answer is not None:
        parts.append(f"{usage.get('prompt_tokens', '?')} prompt + {answer} answer tokens")
    reason = final.get("finish_reason")
    if reason:
        parts.append(f"stopped: {reason} ({FINISH_REASONS.get(reason, reason)})")
    parts.append(f"{ended - started:.2f} s in all")
    return " · ".join(parts)


class Playground:
    """The widgets, and `await run(...)` to prompt from code (what Generate does)."""

    def __init__(self, handler, prompt: str):
        import ipywidgets as w

        self.handler = handler
        wide = w.Layout(width="100%")
        self.prompt = w.Textarea(value=prompt, description="Prompt",
                                 layout=w.Layout(width="100%", height="80px"))
        self.chat = w.Checkbox(value=True, description="use chat template (messages)")
        self.mode = w.ToggleButtons(options=["stream", "normal"], description="answerType")
        self.max_tokens = w.IntSlider(value=128, min=1, max=1024, description="max_tokens")
        self.temperature = w.FloatSlider(value=0.7, min=0.0, max=2.0, step=0.05,
                                         description="temperature")
        self.top_p = w.FloatSlider(value=0.95, min=0.05, max=1.0, step=0.05, description="top_p")
        self.go = w.Button(description="Generate", button_style="primary")
        self.answer = w.Textarea(layout=w.Layout(width="100%", height="200px"))
        self.extras = w.Label(layout=wide)  # fields the handler yields beside "text"
        self.status = w.Label(layout=wide)
        self.go.on_click(lambda _: asyncio.ensure_future(self.run()))
        self.box = w.VBox([self.prompt, self.chat, self.mode, self.max_tokens,
                           self.temperature, self.top_p, self.go, self.answer, self.extras,
                           self.status])

    def job_input(self) -> dict:
        text = self.prompt.value
        job_input = {"messages": [{"role": "user", "content": text}]} if self.chat.value \
            else {"prompt": text}
        job_input.update(answerType=self.mode.value, sampling_params={
            "max_tokens": self.max_tokens.value, "temperature": self.temperature.value,
            "top_p": self.top_p.value})
        return job_input

    async def run(self) -> list[dict]:
        """One job from the widgets' values, shown as it streams; returns its chunks."""
        from llmkit.runtime import stream_job

        self.answer.value, self.extras.value, self.status.value = "", "", "generating..."
        chunks, other, first, started = [], {}, None, time.perf_counter()
        async for chunk in stream_job(self.handler, self.job_input(), "playground"):
            chunks.append(chunk)
            if "error" in chunk:
                self.status.value = "error: " + json.dumps(chunk["error"])
                return chunks
            if chunk.get("text") and first is None:
                first = time.perf_counter()
            self.answer.value += chunk.get("text", "")  # shows the text as it arrives
            other.update((k, v) for k, v in chunk.items() if k != "text")
            self.extras.value = json.dumps(other) if other else ""
        self.status.value = figures(started, first, time.perf_counter(), other)
        return chunks

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)


def playground(handler, prompt: str = "What is the capital of France?") -> Playground:
    """Start vLLM (once per kernel) and show the playground for ``handler``."""
    from llmkit.runtime import engine, settings

    started = time.perf_counter()
    engine()
    if time.perf_counter() - started > 1:
        print(f"engine ready in {time.perf_counter() - started:.1f} s: {settings().model}")
    return Playground(handler, prompt)
