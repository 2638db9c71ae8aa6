"""Every encoder family a user may pick, as tiny random models built here (no download), all with
the tiny BERT WordPiece tokenizer of conftest: the families docre routes through its own attention
(the fast path) and those that run their own (the general path, models/long_input.py) train and
predict; the general path gives the fast path's logits and gradients; Longformer and BigBird read a
document longer than 512 tokens in one window, with their attention moved back to token
positions; an encoder without attention (FNet) is refused in one line."""

import json
import math

import pytest
import torch

from docre.config import load_config
from docre.data.collate import collate
from docre.data.feature import probe_tokenizer
from docre.errors import DocreError
from docre.models import build_model, load_tokenizer
from docre.models.long_input import AttentionTap, GeneralTap, encode
from tests.conftest import FIXTURES, ROOT, tiny_vocab
from tests.models.test_atlop import features_for, reference_logits

WORDS = ["alpha", "beta", "works", "for", "lives", "in", "the", "city", "of", "met"]
SPECIAL = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}  # the tiny vocab's [PAD], [CLS], [SEP]
# model_type -> what differs from the shared tiny size (hidden 32, 2 layers, 2 heads); 64 usable positions
# (the fixture's 181-token document takes windows), Longformer and BigBird 1,024 (one window, small local windows)
FAMILIES = {
    "bert": {"max_position_embeddings": 64},
    "roberta": {"max_position_embeddings": 66} | SPECIAL,
    "xlm-roberta": {"max_position_embeddings": 66} | SPECIAL,
    "electra": {"max_position_embeddings": 64, "embedding_size": 32},
    "albert": {"max_position_embeddings": 64, "embedding_size": 16},
    "distilbert": {"max_position_embeddings": 64, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    # ModernBERT's second layer attends within a sliding window of 16 tokens (its first globally)
    "modernbert": {"max_position_embeddings": 64, "local_attention": 16, "cls_token_id": 2, "sep_token_id": 3} | SPECIAL,
    "deberta": {"max_position_embeddings": 64},
    # DeBERTa-v3's attention: relative positions only, disentangled c2p + p2c, log buckets
    "deberta-v2": {"max_position_embeddings": 64, "relative_attention": True, "position_biased_input": False,
                   "pos_att_type": ["p2c", "c2p"], "position_buckets": 16, "norm_rel_ebd": "layer_norm",
                   "share_att_key": True},
    "mpnet": {"max_position_embeddings": 66},
    "longformer": {"max_position_embeddings": 1026, "attention_window": 16} | SPECIAL,
    "big_bird": {"max_position_embeddings": 1024, "block_size": 8, "num_random_blocks": 2} | SPECIAL,
}
FAST = ["bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "modernbert"]
GENERAL = ["deberta", "deberta-v2", "mpnet", "longformer", "big_bird"]
NO_ATTENTION = "fnet"


def save_family(folder, model_type: str, **settings) -> str:
    """A random tiny `model_type` encoder and the tiny BERT tokenizer, saved in `folder`."""
    from transformers import AutoConfig, AutoModel, BertTokenizer

    vocab = tiny_vocab(WORDS)
    BertTokenizer(vocab=vocab).save_pretrained(folder)
    config = AutoConfig.for_model(model_type, vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, **settings)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """model_type -> its saved folder, built on first use."""
    folders = {}

    def folder(model_type: str) -> str:
        if model_type not in folders:
            settings = FAMILIES.get(model_type, {"max_position_embeddings": 64, "use_tpu_fourier_optimizations": False})
            folders[model_type] = save_family(tmp_path_factory.mktemp(model_type), model_type, **settings)
        return folders[model_type]

    return folder


def make_model(folder: str, **options):
    tokenizer = load_tokenizer(folder)
    info = probe_tokenizer(tokenizer, "*")
    torch.manual_seed(0)
    return build_model(folder, 97, info.start_ids, info.end_ids, emb_size=64, block_size=16, **options), tokenizer


def long_doc(repeats: int = 70) -> dict:
    """One sentence of 8 * `repeats` words (600 word-pieces with markers for 70) and three entities."""
    words = ["alpha", "works", "for", "beta", "in", "the", "city", "."] * repeats
    last = len(words) - 2
    return {"title": "long", "sents": [words], "labels": [{"h": 0, "t": 1, "r": "P108"}],
            "vertexSet": [[{"name": "alpha", "sent_id": 0, "pos": [i, i + 1]} for i in range(0, last, 56)],
                          [{"name": "beta", "sent_id": 0, "pos": [i + 3, i + 4]} for i in range(16, last, 72)],
                          [{"name": "city", "sent_id": 0, "pos": [last, last + 1]}]]}


def test_tokenizer_keeps_its_special_tokens_in_every_family_folder(backbone):
    for model_type in [*FAMILIES, NO_ATTENTION]:
        info = probe_tokenizer(load_tokenizer(backbone(model_type)), "*")
        assert (info.start_ids, info.end_ids, info.marker_ids) == ([2], [3], [5]), model_type


@pytest.mark.parametrize("model_type", FAST + GENERAL)
def test_each_family_takes_its_attention_path(backbone, model_type):
    model, _ = make_model(backbone(model_type))
    assert isinstance(model.tap, AttentionTap if model_type in FAST else GeneralTap)


@pytest.mark.parametrize("model_type", FAST + GENERAL)
def test_each_family_trains_and_predicts(backbone, model_type, tmp_path):
    """What a user runs: train.py's train() on the fixture documents, two steps, then the test split
    predicted and scored (the 181-token document takes windows where the window is 64)."""
    from docre.diagnostics import load_logits
    from docre.trainer import train

    cfg = load_config(ROOT / "configs/smoke.yaml", [
        f"model.backbone={backbone(model_type)}", f"output_dir={tmp_path}", "run_name=family", "train.max_steps=2",
        "train.log_every=1", "data.dev_file=", "data.cache_dir=none",
    ])
    results = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "family" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["type"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert 0 <= results["test"]["f1"] <= 1 and (tmp_path / "family" / "test_predictions.json").is_file()
    logits, _, pairs_per_doc = load_logits(tmp_path / "family" / "test_logits.safetensors")
    assert logits.shape == (38, 97) and pairs_per_doc.sum() == 38 and torch.isfinite(logits).all()


def zero_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_probs_dropout_prob", "attention_dropout"):
        if hasattr(model.encoder.config, name):
            setattr(model.encoder.config, name, 0.0)


@pytest.mark.parametrize("model_type", FAST)
def test_general_path_equals_the_fast_path(backbone, model_type, rel2id):
    """Same weights, both paths: logits in eval mode on documents that fit and one that takes 3+
    windows; for BERT also the gradients of a training-mode step with dropout off."""
    tokenizer = load_tokenizer(backbone(model_type))
    batch = collate(features_for(tokenizer, rel2id), 97, 0)
    assert batch.input_ids.size(1) > 64  # the windowed path
    results = []
    for general in (False, True):
        model, _ = make_model(backbone(model_type), general_attention=general)
        assert isinstance(model.tap, GeneralTap if general else AttentionTap)
        with torch.no_grad():
            logits = model.eval()(batch)
        if model_type == "bert":
            zero_dropout(model)
            trained = model.train()(batch)
            (trained * torch.linspace(-1, 1, trained.numel()).view_as(trained)).sum().backward()
        results.append((logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (fast, fast_grads), (general, general_grads) = results
    torch.testing.assert_close(general, fast, atol=1e-5, rtol=0)
    assert fast_grads.keys() == general_grads.keys() and bool(fast_grads) == (model_type == "bert")
    for name, grad in fast_grads.items():
        torch.testing.assert_close(general_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("model_type", ["deberta", "deberta-v2", "mpnet"])
def test_general_path_equals_atlops_reference(backbone, model_type, rel2id):
    """The families whose `output_attentions` gives [N, H, L, L] maps: the model (the pooled layers
    alone asked for their maps, marker rows gathered, windows merged) equals test_atlop's slow
    reference (every layer's maps, ATLOP's window loop), including the document that takes windows."""
    from transformers import AutoModel

    model, tokenizer = make_model(backbone(model_type))
    features = features_for(tokenizer, rel2id)
    assert max(len(f.input_ids) for f in features) > model.window
    reference = AutoModel.from_pretrained(backbone(model_type), attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model.eval()(collate(features, 97, 0))
        expected = reference_logits(model, reference, features)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["deberta-v2", "big_bird"])
def test_gradient_checkpointing_changes_nothing_on_the_general_path(backbone, model_type, rel2id):
    """DeBERTa's pooled layers are asked for their maps outside the checkpointed layer; BigBird's
    maps come from inside it, so its recomputation in backward must repeat the gathering (the
    181-token fixture document makes the batch long enough for block-sparse attention)."""
    tokenizer = load_tokenizer(backbone(model_type))
    batch = collate(features_for(tokenizer, rel2id), 97, 0)
    results = []
    for checkpointing in (False, True):
        model, _ = make_model(backbone(model_type), gradient_checkpointing=checkpointing)
        zero_dropout(model)
        logits = model.train()(batch)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    if model_type == "big_bird":
        assert model.encoder.attention_type == "block_sparse"
    torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def one_pass_lengths(model) -> list[tuple[int, int]]:
    """Records the [N, L] shape of every encoder pass from now on."""
    shapes = []
    model.encoder.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
                                            with_kwargs=True)
    return shapes


@pytest.mark.parametrize("model_type", ["longformer", "big_bird"])
def test_long_encoders_read_a_long_document_in_one_window(backbone, model_type, rel2id):
    model, tokenizer = make_model(backbone(model_type))
    feature = features_for(tokenizer, rel2id, max_seq_length=0, docs=[long_doc()])[0]
    length = len(feature.input_ids)
    assert 512 < length <= model.window == 1024
    passes = one_pass_lengths(model)
    batch = collate([feature], 97, 0)
    logits = model.train()(batch)
    assert passes == [(1, length)]  # the whole document in one pass, no windows
    logits.sum().backward()
    # every trained parameter gets a gradient (DistributedDataParallel needs it): Longformer's unused
    # projections for global attention are frozen
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    with torch.no_grad():
        predicted = model.eval()(batch)
    assert predicted.shape == (len(feature.hts), 97) and torch.isfinite(predicted).all()


def last_layer_rows(model, feature):
    """Marker rows of the last layer's attention [M, H, L] as the model pools them, and their positions."""
    batch = collate([feature], 97, 0)
    with torch.no_grad():
        _, rows = encode(model.encoder, model.tap, "last", batch.input_ids, batch.attention_mask, batch.mention_doc,
                         batch.mention_pos, model.window, model.start_ids, model.end_ids)
    return rows, batch.mention_pos


def test_longformer_rows_are_its_sliding_window_attention_at_token_positions(backbone, rel2id):
    """The local [L, H, 2w + 1] layout moved to token positions equals a softmax over the band
    |i - j| <= w computed densely from the last layer's own query and key projections."""
    model, tokenizer = make_model(backbone("longformer"), layer_pooling="last")
    model.eval()
    feature = features_for(tokenizer, rel2id, max_seq_length=0, docs=[long_doc()])[0]
    rows, positions = last_layer_rows(model, feature)
    ids = torch.as_tensor(feature.input_ids).unsqueeze(0)
    with torch.no_grad():
        hidden = model.encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2][0]  # [L, D]
        attention = model.encoder.encoder.layer[-1].attention.self
        heads, width, window = attention.num_heads, attention.head_dim, attention.one_sided_attn_window_size
        query = (attention.query(hidden) / math.sqrt(width)).view(-1, heads, width).transpose(0, 1)  # [H, L, d]
        key = attention.key(hidden).view(-1, heads, width).transpose(0, 1)
        scores = query @ key.transpose(1, 2)  # [H, L, L]
        index = torch.arange(len(hidden))
        band = (index[:, None] - index[None, :]).abs() <= window
        expected = torch.softmax(scores.masked_fill(~band, float("-inf")), -1)[:, positions].transpose(0, 1)  # [M, H, L]
    assert window == 8 and len(hidden) > 40 * window
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=1e-5)


def test_bigbird_keeps_block_sparse_attention_and_reads_it_at_token_positions(backbone, rel2id):
    """A long document runs block-sparse (full attention only for inputs too short for it, and back
    again after one); the rows' weight lies on the blocks a query attends to (first and last
    block, its own and its neighbours, and in eval the random blocks, which are block 0)."""
    model, tokenizer = make_model(backbone("big_bird"), layer_pooling="last")
    model.eval()
    long, short = features_for(tokenizer, rel2id, max_seq_length=0, docs=[long_doc(), long_doc(2)])
    rows, positions = last_layer_rows(model, long)
    assert model.encoder.attention_type == "block_sparse"
    size = model.encoder.config.block_size
    blocks = math.ceil(len(long.input_ids) / size)
    checked = 0
    for row, position in zip(rows, positions.tolist()):
        own = position // size
        if 2 <= own < blocks - 2:  # the middle blocks: sliding window + global + random
            allowed = torch.zeros(blocks * size, dtype=torch.bool)
            for block in (0, blocks - 1, own - 1, own, own + 1):
                allowed[block * size : (block + 1) * size] = True
            assert (row[:, ~allowed[: row.size(1)]] == 0).all() and (row[:, position] > 0).all()
            # at most 1: the map shows once the weight of a key block that was also drawn as a random block
            assert (row.sum(-1) <= 1 + 1e-5).all()
            checked += 1
    assert checked > 10
    last_layer_rows(model, short)
    assert model.encoder.attention_type == "original_full"  # 27 tokens: too short for block-sparse
    last_layer_rows(model, long)
    assert model.encoder.attention_type == "block_sparse"


def test_an_encoder_without_attention_is_refused_in_one_line(backbone, tmp_path, capsys):
    import runpy
    import sys

    message = ("model.backbone: FNetModel (model_type fnet) returns no attention; docre's localized context pooling "
               "needs token-to-token attention from the encoder")
    with pytest.raises(DocreError) as error:
        make_model(backbone(NO_ATTENTION))
    assert str(error.value) == message
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = ["train.py", "configs/smoke.yaml", f"model.backbone={backbone(NO_ATTENTION)}", f"output_dir={tmp_path}",
                f"data.dir={FIXTURES}", "data.cache_dir=none"]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    stderr = capsys.readouterr().err
    assert (exit_.value.code, stderr.strip().splitlines()[-1]) == (1, f"error: {message}")
    assert "Traceback" not in stderr


def test_layers_are_asked_for_attention_by_keyword_or_by_position():
    """BigBird's encoder loop passes output_attentions by position up to transformers 5.3 and by keyword
    after: the pre-hook sets it where the loop put it (a keyword beside a positional value is a TypeError)."""
    from docre.models.long_input import _ask_for_attention

    class Layer(torch.nn.Module):
        def forward(self, hidden, mask=None, output_attentions=False, cache=None):
            return hidden, output_attentions, cache

    layer = Layer()
    layer.register_forward_pre_hook(_ask_for_attention, with_kwargs=True)
    hidden = torch.zeros(1)
    assert layer(hidden, None, False, "c")[1:] == (True, "c")  # by position (BigBird, transformers <= 5.3)
    assert layer(hidden, mask=None, output_attentions=False)[1:] == (True, None)  # by keyword
    assert layer(hidden)[1:] == (True, None)  # not passed: asked by keyword


@pytest.mark.parametrize("returned", ["no map", "a map of other keys"])
def test_attention_layers_that_return_no_usable_map_are_refused_in_one_line(tiny_backbone, returned):
    """The general path's own check at build time: pooled layers that return no attention, or maps
    that do not cover the tokens, are the FNet line above, not a shape error at the first batch."""
    from docre.models import load_encoder

    encoder = load_encoder(tiny_backbone)

    def replace_map(module, inputs, outputs):  # runs before the tap's hook, which reads the map
        return (outputs[0], None if returned == "no map" else outputs[1][..., :4])

    for layer in encoder.encoder.layer:
        layer.attention.self.register_forward_hook(replace_map)
    with pytest.raises(DocreError, match=r"model.backbone: BertModel \(model_type bert\) returns no attention"):
        GeneralTap(encoder, 1)
