"""A random-weight llama model in GGUF, for tests and the demo.

The vocabulary is the 256 byte tokens plus `<unk>`, `<s>` and `</s>`, so any text tokenizes and
the model runs anywhere llama.cpp runs. The weights are random, so replies are random bytes
(often invalid UTF-8), and the model is built never to choose `</s>`: every reply runs until its
`max_tokens`, which makes reply lengths predictable in tests.

How `</s>` is ruled out: dimension 0 of every token embedding is a positive constant and no
layer writes to dimension 0, so after the final norm that dimension is always positive; the
output row of `</s>` reads only dimension 0, with a large negative weight.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gollama._values import flag_type, int_at_least
from gollama.errors import ToolError

if TYPE_CHECKING:
    import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_SPECIAL = 3
N_VOCAB = N_SPECIAL + 256


@dataclass(frozen=True)
class ModelShape:
    d_model: int = 64
    layers: int = 2
    context: int = 4096
    seed: int = 0

    @property
    def heads(self) -> int:
        return max(1, self.d_model // 32)

    @property
    def d_ff(self) -> int:
        return 2 * self.d_model


def _libraries() -> tuple[Any, Any]:
    """gguf and numpy, which only this tool needs (the `testmodel` extra)."""
    try:
        import gguf
        import numpy
    except ImportError as exc:
        raise ToolError(
            f"writing a test model needs the 'testmodel' extra ({exc.name} is missing): "
            "pip install 'gollama[testmodel]', or uv sync --extra testmodel"
        ) from None
    return gguf, numpy


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    gguf, _ = _libraries()
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * N_VOCAB
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    return tokens, scores, [int(t) for t in types]


def _weights(shape: ModelShape) -> dict[str, np.ndarray]:
    """Tensors in numpy order (rows = outputs), which is ggml's shape reversed."""
    _, numpy = _libraries()
    rng = numpy.random.default_rng(shape.seed)
    d, ff = shape.d_model, shape.d_ff

    def normal(*dims: int, scale: float) -> np.ndarray:
        values: np.ndarray = rng.normal(0.0, scale, size=dims).astype(numpy.float32)
        return values

    embeddings = normal(N_VOCAB, d, scale=1.0)
    embeddings[:, 0] = 1.0  # the constant dimension that keeps </s> impossible
    tensors = {"token_embd.weight": embeddings}
    for layer in range(shape.layers):
        attn_out = normal(d, d, scale=d**-0.5)
        ffn_down = normal(d, ff, scale=ff**-0.5)
        attn_out[0, :] = 0.0  # no layer writes to dimension 0
        ffn_down[0, :] = 0.0
        tensors |= {
            f"blk.{layer}.attn_norm.weight": numpy.ones(d, dtype=numpy.float32),
            f"blk.{layer}.attn_q.weight": normal(d, d, scale=d**-0.5),
            f"blk.{layer}.attn_k.weight": normal(d, d, scale=d**-0.5),
            f"blk.{layer}.attn_v.weight": normal(d, d, scale=d**-0.5),
            f"blk.{layer}.attn_output.weight": attn_out,
            f"blk.{layer}.ffn_norm.weight": numpy.ones(d, dtype=numpy.float32),
            f"blk.{layer}.ffn_gate.weight": normal(ff, d, scale=d**-0.5),
            f"blk.{layer}.ffn_up.weight": normal(ff, d, scale=d**-0.5),
            f"blk.{layer}.ffn_down.weight": ffn_down,
        }
    output = normal(N_VOCAB, d, scale=0.3)
    output[EOS_ID, :] = 0.0
    output[EOS_ID, 0] = -100.0
    tensors["output_norm.weight"] = numpy.ones(d, dtype=numpy.float32)
    tensors["output.weight"] = output
    return tensors


def write_test_model(path: Path, shape: ModelShape = ModelShape()) -> Path:
    """Write the model to `path` (replacing it atomically) and return the path."""
    head_dim, rest = divmod(shape.d_model, shape.heads)
    if rest or head_dim % 2 or shape.d_model < 8 or shape.layers < 1:
        raise ValueError(
            f"unsupported model shape: d_model {shape.d_model} must split into {shape.heads} "
            "heads of an even size, and layers must be 1 or more"
        )
    gguf, _ = _libraries()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name(f"gollama-test-d{shape.d_model}-l{shape.layers}")
    writer.add_vocab_size(N_VOCAB)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.d_model)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.d_ff)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.heads)
    writer.add_rope_dimension_count(shape.d_model // shape.heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, scores, types = _vocabulary()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHATML_TEMPLATE)

    for name, tensor in _weights(shape).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT.gguf", type=Path, help="file to write")
    for flag, lowest, default, what in (
        ("--d-model", 8, 64, "width"),
        ("--layers", 1, 2, "layers"),
        ("--context", 64, 4096, "context length"),
        ("--seed", 0, 0, "random seed"),
    ):
        parser.add_argument(
            flag,
            type=flag_type(int_at_least(lowest)),
            default=default,
            help=f"{what} (default {default})",
        )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    shape = ModelShape(
        d_model=args.d_model, layers=args.layers, context=args.context, seed=args.seed
    )
    try:
        path = write_test_model(args.out, shape)
    except (ValueError, ToolError) as exc:
        print(f"gollama testmodel: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, d_model {shape.d_model}, "
        f"{shape.layers} layers)"
    )
    return 0
