"""Job inputs for the kit's handler, as tests, the soak and the benchmarks send them."""

from __future__ import annotations


def exact_tokens(tokens: int, prompt: str = "hello world", *, stream: bool = True,
                 chat: bool = False, **sampling) -> dict:
    """An input whose answer is exactly ``tokens`` tokens long (min_tokens = max_tokens),
    so runs compare and a job lasts as long as asked, whatever the model would say.

    ``chat`` sends ``prompt`` as one user message (the chat template applies);
    ``sampling`` adds sampling parameters (``seed``, ``temperature``, ...).
    """
    source = ({"messages": [{"role": "user", "content": prompt}]} if chat
              else {"prompt": prompt})
    return {**source, "answerType": "stream" if stream else "normal",
            "sampling_params": {"max_tokens": tokens, "min_tokens": tokens, **sampling}}
