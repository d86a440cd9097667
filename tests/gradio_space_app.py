"""A real gradio app with the exact layout of the Qwen2-72B-Instruct Space, for integration tests.

Run it with the python of a *gradio* virtualenv (see .ci/gradio-envs.sh), never the project's:

    .ci-venvs/gradio6/bin/python tests/gradio_space_app.py --port 7860

Standalone on purpose: stdlib + gradio only, no ``pipeline`` import; works on gradio 4.44.1
and 6.x (and 5.x).  tests/real_gradio.py starts it as a subprocess.

Layout and event order mirror the Space's app.py as described in shared/PROTOCOL.md §2, so
that ``/config`` has the same ids as the captures in shared/gradio-captures/*_config.json:
components 4 (System), 7 (Set system button), 8 (hidden system_state), 10 (Chatbot),
11 (Input), 13 (Clear), 14 (Send); dependencies 0 ``model_chat`` (Input submit),
1 ``model_chat_1`` (Send click), 2 ``clear_session``, 3 ``modify_system_session``.
Do not add, remove or reorder components or events: every id after the change would shift.

``model_chat`` is a fake of the Space's DashScope call: it streams ``answer_for(query, system)``
word by word, cumulatively (each yield carries the whole reply so far, like DashScope's
``incremental_output=False``), sleeping GRADIO_FAKE_WORD_DELAY seconds per word.
Special queries: "RAISE" raises ValueError before the first yield, "RAISE_LATER" after 3 yields
(the Space has no show_error, so clients see ``success:false`` with ``error:null``).

Environment:
    GRADIO_FAKE_WORD_DELAY         seconds slept before each word (default 0.01)
    GRADIO_FAKE_CONCURRENCY_LIMIT  concurrency_limit of every event (default 40, like the Space)
    GRADIO_FAKE_MAX_SIZE           demo.queue(max_size=...) (default: unbounded, like the Space)
    GRADIO_FAKE_PORT               port if --port is not given (default 7860)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

GRADIO_MAJOR = int(gr.__version__.split(".")[0])
DEFAULT_SYSTEM = "You are a helpful assistant."


# --- keep in sync with tests/real_gradio.py (answer_for, split_words) --------------------------
def answer_for(query: str, system: str) -> str:
    """The full reply model_chat streams for ``query`` under ``system``.

    Repeated words and non-ASCII on purpose, so clients that de-duplicate or mis-decode show up.
    """
    return f"Echo: {query} | system: {system} | no no no — café ✓"


def split_words(text: str) -> list[str]:
    """Split ``text`` into words, each carrying the whitespace *before* it; "".join() == text.

    Leading (not trailing) whitespace, like real token streams and like the captures
    ("Fake", " answer", " to"...): a partial reply then never ends in whitespace.  That matters
    because the Chatbot postprocess (4.44.1 and 6.x alike) runs ``inspect.cleandoc`` on every
    string message, which strips a leading blank/indent and dedents continuation lines.
    """
    return re.findall(r"\s*\S+(?:\s+$)?", text) or ([text] if text else [])


# -----------------------------------------------------------------------------------------------


def _text_of(content: object) -> str:
    """Text of one message's content: str (tuples / plain messages) or gradio 6 content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text_of(part) for part in content)
    return str(content)


def _history_pairs(history: list | None) -> list[list[str]]:
    """Normalise the incoming chatbot value to ``[[user, bot], ...]`` pairs.

    gradio 4.x/5.x (tuples) pass ``[[user, bot], ...]``; gradio 6 passes messages dicts
    ``{"role", "content": [{"type": "text", "text": ...}], ...}``.
    """
    pairs: list[list[str]] = []
    for item in history or []:
        if isinstance(item, dict):
            role, text = item.get("role"), _text_of(item.get("content"))
            if role == "user":
                pairs.append([text, ""])
            elif role == "assistant":
                if pairs and not pairs[-1][1]:
                    pairs[-1][1] = text
                else:
                    pairs.append(["", text])
        else:
            user, bot = [*list(item), None, None][:2]
            pairs.append([_text_of(user), _text_of(bot)])
    return pairs


def _chatbot_value(pairs: list[list[str]]) -> list:
    """The chatbot output in this gradio's format: tuples before 6.0, messages from 6.0 on."""
    if GRADIO_MAJOR < 6:
        return [list(pair) for pair in pairs]
    messages: list[dict[str, str]] = []
    for user, bot in pairs:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": bot})
    return messages


def _fake_error(status: int, code: str, message: str) -> ValueError:
    # The Space's error text for a non-OK DashScope chunk.
    return ValueError(
        f"Request id: fake, Status code: {status}, error code: {code}, error message: {message}"
    )


def clear_session():
    return "", []


def modify_system_session(system: str):
    if system is None or len(system) == 0:
        system = DEFAULT_SYSTEM
    return system, system, []


def model_chat(query, history, system):
    if query is None:
        query = ""
    if system is None:
        system = ""
    pairs = _history_pairs(history)
    if query == "RAISE":
        raise _fake_error(400, "InvalidParameter", "fake failure before the first chunk")
    delay = float(os.environ.get("GRADIO_FAKE_WORD_DELAY", "0.01"))
    partial = ""
    for n, word in enumerate(split_words(answer_for(query, system)), start=1):
        if delay > 0:
            time.sleep(delay)
        partial += word  # cumulative, like DashScope with incremental_output=False
        yield "", _chatbot_value([*pairs, [query, partial]]), system
        if query == "RAISE_LATER" and n == 3:
            raise _fake_error(500, "InternalError", "fake failure after 3 chunks")


def build_demo() -> gr.Blocks:
    concurrency_limit = int(os.environ.get("GRADIO_FAKE_CONCURRENCY_LIMIT", "40"))
    max_size_env = os.environ.get("GRADIO_FAKE_MAX_SIZE", "").strip()
    max_size = int(max_size_env) if max_size_env else None
    chatbot_kwargs = {"type": "tuples"} if GRADIO_MAJOR < 6 else {}  # 6.x: messages only

    with gr.Blocks() as demo:
        gr.Markdown("<center><font size=8>Qwen2-72B-instruct Chat (local mirror)</center>")  # 1
        with gr.Row():  # 2
            with gr.Column(scale=3):  # 3
                # 4 (gradio wraps it in form 5)
                system_input = gr.Textbox(value=DEFAULT_SYSTEM, lines=1, label="System")
            with gr.Column(scale=1):  # 6
                modify_system = gr.Button("Set system prompt and clear history", scale=2)  # 7
            system_state = gr.Textbox(value=DEFAULT_SYSTEM, visible=False)  # 8 (+form 9)
        chatbot = gr.Chatbot(label="qwen2-72B-instruct", **chatbot_kwargs)  # 10
        textbox = gr.Textbox(lines=1, label="Input")  # 11 (+form 15)
        with gr.Row():  # 12
            clear_history = gr.Button("Clear history")  # 13
            submit = gr.Button("Send")  # 14

        # Event order fixes the fn_index: 0 model_chat, 1 model_chat_1, 2, 3.
        textbox.submit(
            model_chat,
            inputs=[textbox, chatbot, system_state],
            outputs=[textbox, chatbot, system_input],
            concurrency_limit=concurrency_limit,
        )
        submit.click(
            model_chat,
            inputs=[textbox, chatbot, system_state],
            outputs=[textbox, chatbot, system_input],
            concurrency_limit=concurrency_limit,
        )
        clear_history.click(
            fn=clear_session,
            inputs=[],
            outputs=[textbox, chatbot],
            concurrency_limit=concurrency_limit,
        )
        modify_system.click(
            fn=modify_system_session,
            inputs=[system_input],
            outputs=[system_state, system_input, chatbot],
            concurrency_limit=concurrency_limit,
        )
    demo.queue(api_open=False, max_size=max_size)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_port = int(os.environ.get("GRADIO_FAKE_PORT", "7860"))
    parser.add_argument("--port", type=int, default=default_port)
    args = parser.parse_args(argv)
    demo = build_demo()
    print(
        f"gradio {gr.__version__} mirror app on 127.0.0.1:{args.port}", file=sys.stderr, flush=True
    )
    demo.launch(server_name="127.0.0.1", server_port=args.port, share=False, max_threads=40)


if __name__ == "__main__":
    main()
