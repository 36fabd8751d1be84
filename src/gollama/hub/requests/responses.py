"""Reading OpenAI Responses API requests (Codex, the OpenAI agent SDKs): `/v1/responses` and
`/v1/responses/input_tokens`.

llama-server refuses `previous_response_id`; the hub keeps the responses it relayed
(`stored_responses`) and expands the id into the input: the earlier requests' input items and
the responses' output items come first, then this request's input. Instructions are not
carried over (as with OpenAI's own API). The prompt's key is the instructions, then the items.
"""

from __future__ import annotations

from typing import Any

from gollama._apis import RESPONSES
from gollama.errors import BadRequest, ModelNotFound
from gollama.hub.requests import (
    Context,
    job,
    required,
    served_model,
    stream_field,
    text_field,
    token_limit,
)
from gollama.hub.retry import Job, Keep
from gollama.hub.routing.prompts import responses_key

# Output items llama-server takes back as input items.
REUSABLE = frozenset({"message", "function_call", "function_call_output", "reasoning"})


class ResponseNotFound(ModelNotFound):
    code = "previous_response_not_found"


def responses(payload: dict[str, Any], ctx: Context) -> Job:
    added = _input_items(payload)
    previous = _expand(payload, ctx, added)
    instructions = text_field(payload, "instructions")
    token_limit(ctx, payload, ("max_output_tokens",), default_field="max_output_tokens")
    prompt = None
    if ctx.keyed:
        items = payload["input"] if previous is not None else added
        prompt = responses_key(served_model(ctx, payload), instructions, items)
    keep = _keeper(ctx, previous, added) if payload.get("store", True) is not False else None
    return job(
        ctx,
        payload,
        dialect=RESPONSES,
        stream=stream_field(payload),
        prompt=prompt,
        extends=True,
        keep=keep,
        echo={"previous_response_id": previous} if previous is not None else None,
    )


def input_tokens(payload: dict[str, Any], ctx: Context) -> Job:
    """How many input tokens a request would take (no slot); a previous response counts."""
    _expand(payload, ctx, _input_items(payload))
    text_field(payload, "instructions")
    return job(ctx, payload, dialect=RESPONSES, light=True)


def _input_items(payload: dict[str, Any]) -> list[Any]:
    """The request's input as a list of items (a string is one user message)."""
    given = required(payload, "input")
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not all(isinstance(item, dict) for item in given):
        raise BadRequest("'input' must be a string or an array of items", param="input")
    return given


def _expand(payload: dict[str, Any], ctx: Context, added: list[Any]) -> str | None:
    """Put the conversation before `previous_response_id` into the input; returns that id."""
    previous = payload.pop("previous_response_id", None)
    if previous is None:
        return None
    if not isinstance(previous, str) or not previous:
        raise BadRequest("'previous_response_id' must be a string", param="previous_response_id")
    earlier = ctx.responses.conversation(ctx.key_name, previous) if ctx.responses else None
    if earlier is None:
        raise ResponseNotFound(
            f"response {previous!r} is not kept by this hub (it keeps responses for a while, "
            "per API key); send the whole conversation as 'input'",
            param="previous_response_id",
        )
    payload["input"] = earlier + added
    return previous


def _keeper(ctx: Context, previous: str | None, added: list[Any]) -> Keep | None:
    store, owner = ctx.responses, ctx.key_name
    if store is None:
        return None

    def keep(response: Any) -> None:
        response_id = response.get("id") if isinstance(response, dict) else None
        output = response.get("output") if isinstance(response, dict) else None
        if isinstance(response_id, str) and isinstance(output, list):
            reusable = [i for i in output if isinstance(i, dict) and i.get("type") in REUSABLE]
            store.put(owner, response_id, previous, added, reusable)

    return keep
