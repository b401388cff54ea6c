"""Small random sentence-transformers folders of each encoder architecture, built here.

Configs from ``transformers`` (2 layers, hidden 32), tokenizers from the base model's
WordPiece vocabulary (BERT, DistilBERT, MPNet) or trained on a few posts with ``tokenizers``
(byte-level BPE for RoBERTa, Unigram for XLM-RoBERTa); saved with sentence-transformers
itself, so the folders are what users have. No downloads.
"""
from __future__ import annotations

from pathlib import Path

ARCHS = ("bert", "mpnet", "roberta", "xlm-roberta", "distilbert")
HIDDEN = 32

_CORPUS = [
    "Thrilled to announce I've joined a new team! We are hiring backend engineers in Berlin and remote.",
    "Climate change is the defining challenge of our generation; renewables are the answer.",
    "Three lessons from failing my first startup: listen, ship, repeat. #MondayMotivation",
    "Ünïcödé, 日本語のテキスト, and emoji 🎉 in one post. Scaling inference means batching and caching.",
]


def _vocab_words() -> list[str]:
    from postemb_rt.model_dir import base_encoder_path

    return (base_encoder_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()


def _wordpiece(mpnet: bool):
    """The base model's WordPiece tokenizer; for MPNet with <s> ... </s> and <pad> added."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from postemb_rt.model_dir import base_encoder_path

    tok = Tokenizer.from_file(str(base_encoder_path() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    names = dict(unk_token="[UNK]", mask_token="[MASK]")
    if mpnet:
        tok.add_special_tokens(["<s>", "</s>", "<pad>"])
        s, e = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", s), ("</s>", e)])
        names.update(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>")
    else:
        names.update(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **names), tok.get_vocab_size()


def _trained(kind: str):
    """A small tokenizer trained on _CORPUS: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    corpus = _CORPUS * 4 + [" ".join(_vocab_words()[2000:6000])]
    if kind == "roberta":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=specials, unk_token="<unk>")
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    return fast, tok.get_vocab_size()


def build_encoder(arch: str, out: Path, seed: int = 0):
    """Save a random ``arch`` encoder and its tokenizer (Hugging Face format) into ``out``."""
    import torch
    import transformers as tf

    out.mkdir(parents=True, exist_ok=True)
    common = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=160)
    if arch in ("bert", "distilbert"):
        tok, vocab = _wordpiece(mpnet=False)
        if arch == "bert":
            cfg = tf.BertConfig(vocab_size=vocab, **common)
        else:
            cfg = tf.DistilBertConfig(vocab_size=vocab, dim=HIDDEN, n_layers=2, n_heads=4, hidden_dim=64,
                                      max_position_embeddings=160)
    elif arch == "mpnet":
        tok, vocab = _wordpiece(mpnet=True)
        cfg = tf.MPNetConfig(vocab_size=vocab, pad_token_id=tok.pad_token_id, **common)
    elif arch in ("roberta", "xlm-roberta"):
        tok, vocab = _trained("roberta" if arch == "roberta" else "unigram")
        cls = tf.RobertaConfig if arch == "roberta" else tf.XLMRobertaConfig
        cfg = cls(vocab_size=vocab, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                  **{**common, "max_position_embeddings": 162})
    else:
        raise ValueError(f"`arch` must be one of {ARCHS}. Given: {arch!r}.")
    torch.manual_seed(seed)
    model = tf.AutoModel.from_config(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def build_st_folder(out: Path, arch: str = "bert", pooling: str = "mean", dense=(), normalize: bool = True,
                    max_seq_length: int = 64, do_lower_case: bool = False, seed: int = 0) -> Path:
    """A sentence-transformers folder: a random ``arch`` encoder, Pooling(``pooling``), one Dense
    per ``dense`` entry ((out_features, bias, activation nn.Module or None)), then Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer

    hf = build_encoder(arch, Path(out).parent / f".{Path(out).name}-hf", seed)
    modules = [Transformer(str(hf), max_seq_length=max_seq_length, do_lower_case=do_lower_case)]
    modules.append(Pooling(HIDDEN, pooling_mode=pooling))
    dim = HIDDEN
    torch.manual_seed(seed + 1)
    for out_features, bias, act in dense:
        modules.append(Dense(dim, out_features, bias=bias, activation_function=act))
        dim = out_features
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return Path(out)
