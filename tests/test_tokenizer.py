"""tolclip.core.tokenizer must give exactly the token ids of open_clip's CLIP tokenizer (the reference)."""

from __future__ import annotations

import ast
import itertools
import pickle
import random
from importlib import resources
from pathlib import Path

import pytest
import torch

from tolclip.core.tokenizer import DEFAULT_CONTEXT_LENGTH, Tokenizer, clean_text, get_tokenizer

# kingdom|phylum|class|order|family|genus|species epithet|common name (may be empty); \t is a tab
_TAXA_TABLE = """
Animalia|Chordata|Aves|Passeriformes|Corvidae|Corvus|corax|Common Raven
Animalia|Chordata|Aves|Passeriformes|Corvidae|Corvus|macrorhynchos|大嘴乌鸦
Animalia|Chordata|Aves|Passeriformes|Corvidae|Corvus|corone|ハシボソガラス
Animalia|Chordata|Aves|Strigiformes|Strigidae|Bubo|bubo|Eurasian Eagle-Owl
Animalia|Chordata|Mammalia|Carnivora|Felidae|Panthera|leo|Lion
Animalia|Chordata|Mammalia|Artiodactyla|Bovidae|Bos|taurus|bœuf domestique
Animalia|Chordata|Actinopterygii|Cypriniformes|Cyprinidae|Cyprinus|carpio|鯉
Animalia|Chordata|Amphibia|Anura|Ranidae|Rana|temporaria|Grenouille rousse
Animalia|Arthropoda|Insecta|Hymenoptera|Apidae|Bombus|mendax ssp. ñandú|Bourdon
Animalia|Arthropoda|Insecta|Lepidoptera|Lycaenidae|Lycaena|phlæas|Small Copper
Animalia|Arthropoda|Insecta|Lepidoptera|Nymphalidae|Vanessa|atalanta|Vulcain
Animalia|Arthropoda|Insecta|Coleoptera|Coccinellidae|Coccinella|septempunctata|
Animalia|Arthropoda|Arachnida|Araneae|Araneidae|Araneus|diadematus|Kreuzspinne
Animalia|Mollusca|Bivalvia|Unionida|Etheriidae|Ætheria|elliptica|Nile oyster
Animalia|Mollusca|Gastropoda|Stylommatophora|Helicidae|Helix|pomatia|Escargot de Bourgogne
Animalia|Cnidaria|Anthozoa|Scleractinia|Acroporidae|Acropora|cervicornis|Staghorn coral
Plantae|Tracheophyta|Magnoliopsida|Rosales|Rosaceae|Rosa|canina|Dog Rose
Plantae|Tracheophyta|Magnoliopsida|Fagales|Fagaceae|Quercus|robur|Stieleiche
Plantae|Tracheophyta|Magnoliopsida|Asterales|Asteraceae|Bellis|perennis|Pâquerette
Plantae|Tracheophyta|Liliopsida|Poales|Poaceae|Oryza|sativa|稲
Plantae|Tracheophyta|Pinopsida|Pinales|Pinaceae|Pinus|sylvestris|Scots pine
Plantae|Bryophyta|Bryopsida|Hypnales|Hypnaceae|Hypnum|cupressiforme|
Fungi|Basidiomycota|Agaricomycetes|Agaricales|Amanitaceae|Amanita|muscaria|Fly Agaric
Fungi|Basidiomycota|Agaricomycetes|Boletales|Boletaceae|Boletus|edulis|Cèpe de Bordeaux
Fungi|Ascomycota|Pezizomycetes|Pezizales|Morchellaceae|Morchella|esculenta|Morille
Chromista|Ochrophyta|Phaeophyceae|Fucales|Fucaceae|Fucus|vesiculosus|Bladder wrack
Protozoa|Amoebozoa|Myxomycetes|Physarales|Physaraceae|Physarum|polycephalum|
Bacteria|Cyanobacteria|Cyanophyceae|Nostocales|Nostocaceae|Nostoc|commune|Star jelly
Animalia|Chordata|Aves|Anseriformes|Anatidae|Cygnus|olor|Mute Swan &amp; cygnets
Animalia|Chordata|Aves|Galliformes|Phasianidae|Pavo|cristatus|Indian  peafowl\t(pavo)
Animalia|Chordata|Reptilia|Squamata|Iguanidae|Iguana|iguana|café-au-lait iguana
Animalia|Chordata|Mammalia|Primates|Hominidae|Pongo|abelii|Orang-utan d'Ȧceh
Animalia|Chordata|Mammalia|Rodentia|Sciuridae|Sciurus|vulgaris|Écureuil roux
Animalia|Chordata|Mammalia|Chiroptera|Vespertilionidae|Myotis|daubentonii|Wasserfledermaus
Animalia|Chordata|Aves|Passeriformes|Paridae|Parus|major|シジュウカラ
Animalia|Chordata|Aves|Piciformes|Picidae|Dendrocopos|major|Pic épeiche
Animalia|Chordata|Mammalia|Carnivora|Ailuridae|Ailurus|fulgens|小熊猫 (red panda)
Animalia|Echinodermata|Asteroidea|Forcipulatida|Asteriidae|Asterias|rubens|Étoile de mer
Plantae|Tracheophyta|Magnoliopsida|Malvales|Malvaceae|Tilia|×europaea|Lime (Linden)
Animalia|Chordata|Aves|Passeriformes|Muscicapidae|Erithacus|rubecula|Rouge-gorge “familier”
"""
TAXA = [tuple(line.split("|")) for line in _TAXA_TABLE.strip().splitlines()]


SPECIAL_TEXTS = [
    "",
    " ",
    "\t\n  \r\n",
    "A PHOTO OF CORVUS CORAX.",
    "a photo of Bombus mendax ssp. ñandú.",
    "Ætheria elliptica, Lycaena phlæas, bœuf, Straße, ﬁsh (ligature), ＦＵＬＬＷＩＤＴＨ",
    "a photo of 大嘴乌鸦 with common name ハシボソガラス と カラス.",
    "Mute Swan &amp; cygnets &amp;amp; &lt;b&gt; &#233;t&#xE9; &nbsp;&copy;",
    "double  spaces\tand\ttabs\nand\nnewlines\u00a0nbsp\u2009thin\u3000ideographic",
    "mojibake: cafÃ© â€œquotedâ€\x9d Ã±andÃº",
    "it's THEY'RE we've I'M you'll he'd o'brien",
    "numbers 1234567890 ½ ² ٣ 五 and 3.14-inch",
    "emoji 🦜🐝🍄 and symbols ©®™ ±×÷ → ∞ ... — – ‘quotes’ “dq”",
    "control\x00chars\x07here\x1b[31mred\x1b[0m\u200bzero\ufeffwidth",
    "<start_of_text> literal specials <end_of_text> and !<start_of_text> glued",
    "café-au-lait Crème brûlée Ñandú ÅNGSTRÖM İstanbul ΣΊΣΥΦΟΣ Ελληνικά кириллица",
    "한국어 까치 ｶﾀｶﾅ العربية עברית हिन्दी ไทย",
    "x" * 500,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]

FORMS = ("com", "sci", "taxon", "sci_com", "taxon_com")


def _captions(taxon: tuple[str, ...]) -> list[str]:
    *ranks, genus, epithet, common = taxon
    sci = f"{genus} {epithet}"
    full = " ".join([*ranks, sci])
    out = [f"a photo of {common or sci}.", f"a photo of {sci}.", f"a photo of {full}."]
    suffix = f" with common name {common}" if common else ""
    out += [f"a photo of {sci}{suffix}.", f"a photo of {full}{suffix}."]
    return out


def _all_captions() -> list[str]:
    rng = random.Random(0)
    caps = [c for taxon in TAXA for c in _captions(taxon)]
    # Recombine ranks across taxa for several hundred more distinct taxonomic strings.
    for _ in range(300):
        mixed = tuple(rng.choice(TAXA)[i] for i in range(8))
        caps.append(rng.choice(_captions(mixed)))
    # Over-long captions (> 77 tokens), some cased differently.
    for i in range(10):
        chosen = rng.sample(TAXA, 6)
        text = " and ".join(_captions(t)[4] for t in chosen)
        caps.append(text.upper() if i % 2 else text)
    return caps + SPECIAL_TEXTS


CAPTIONS = _all_captions()


@pytest.fixture(scope="module")
def open_clip_tokenize():
    try:
        import open_clip
    except ImportError as exc:  # it is a test dependency, present in CI
        pytest.skip(f"open_clip (reference tokenizer) is not importable: {exc}")
    return open_clip.tokenize


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def test_constants(tok: Tokenizer) -> None:
    assert tok.sot_token_id == 49406
    assert tok.eot_token_id == 49407
    assert tok.vocab_size == 49408
    assert tok.context_length == DEFAULT_CONTEXT_LENGTH == 77
    assert tok("a").shape == (1, 77)
    assert tok("a").dtype == torch.long
    assert tok([]).shape == (0, 77)


def test_caption_set_is_large_and_varied() -> None:
    assert len(CAPTIONS) >= 400
    assert len(TAXA) * len(FORMS) <= len(CAPTIONS)


def test_matches_open_clip(tok: Tokenizer, open_clip_tokenize) -> None:
    ours = tok(CAPTIONS)
    ref = open_clip_tokenize(CAPTIONS)
    assert ours.shape == ref.shape == (len(CAPTIONS), 77)
    mismatched = [CAPTIONS[i] for i in range(len(CAPTIONS)) if not torch.equal(ours[i], ref[i])]
    assert not mismatched, f"{len(mismatched)} captions differ from open_clip, e.g. {mismatched[:3]!r}"


def test_encode_matches_open_clip_untruncated(tok: Tokenizer, open_clip_tokenize) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    for text in SPECIAL_TEXTS + CAPTIONS[::7]:
        assert tok.encode(text) == ref.encode(text), text


def test_random_strings_match_open_clip(tok: Tokenizer, open_clip_tokenize) -> None:
    rng = random.Random(1)
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-'&#()\"/\t")
    alphabet += list("ñéèæœøßÆŒ大嘴乌鸦ワタリガラス€“”’…—\u00a0\u200b🦜ﬁＡ") + ["&amp;", "Ã©", "'s", "'LL"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    assert torch.equal(tok(texts), open_clip_tokenize(texts))


def test_truncation(tok: Tokenizer, open_clip_tokenize) -> None:
    long = [c for c in CAPTIONS if len(tok.encode(c)) > 75]
    assert len(long) >= 10
    out = tok(long)
    assert (out[:, -1] == tok.eot_token_id).all()
    assert (out[:, 0] == tok.sot_token_id).all()
    assert (out != 0).all()
    assert torch.equal(out, open_clip_tokenize(long))
    # exactly at the boundary: 75 ids + SOT + EOT fit without truncation
    text = " ".join(["the"] * 75)
    assert len(tok.encode(text)) == 75
    row = tok(text)[0]
    assert row[-1] == tok.eot_token_id and row[-2] != tok.eot_token_id
    assert torch.equal(tok(text), open_clip_tokenize(text))


@pytest.mark.parametrize("context_length", [1, 2, 5, 16, 32, 100])
def test_other_context_lengths(context_length: int, open_clip_tokenize) -> None:
    texts = CAPTIONS[::5]
    ref = open_clip_tokenize(texts, context_length=context_length)
    assert torch.equal(Tokenizer(context_length)(texts), ref)
    assert torch.equal(get_tokenizer()(texts, context_length=context_length), ref)
    assert Tokenizer(context_length)(texts).shape == (len(texts), context_length)


def test_invalid_context_length(tok: Tokenizer) -> None:
    with pytest.raises(ValueError):
        Tokenizer(0)
    with pytest.raises(ValueError):
        tok("a", context_length=0)


def test_batch_equals_single(tok: Tokenizer) -> None:
    texts = CAPTIONS[::9]
    batch = tok(texts)
    singles = torch.cat([tok(t) for t in texts])
    assert torch.equal(batch, singles)
    assert torch.equal(tok(texts[0]), tok([texts[0]]))
    assert torch.equal(tok(tuple(texts)), batch)


def test_pickle_round_trip() -> None:
    tok = Tokenizer(context_length=32)
    data = pickle.dumps(tok)
    assert len(data) < 1000  # only the settings travel, not the vocabulary
    clone = pickle.loads(data)
    assert isinstance(clone, Tokenizer)
    assert clone.context_length == 32
    assert torch.equal(clone(CAPTIONS), tok(CAPTIONS))
    shared = pickle.loads(pickle.dumps(get_tokenizer()))
    assert torch.equal(shared(CAPTIONS[:20]), get_tokenizer()(CAPTIONS[:20]))


def test_get_tokenizer_is_cached() -> None:
    assert get_tokenizer() is get_tokenizer()
    assert get_tokenizer(77) is get_tokenizer()
    assert get_tokenizer(16) is not get_tokenizer()
    assert get_tokenizer(16).context_length == 16


def test_encode_and_decode(tok: Tokenizer) -> None:
    assert tok.encode("") == []
    ids = tok.encode("a photo of Corvus corax.")
    assert tok.sot_token_id not in ids and tok.eot_token_id not in ids
    assert tok.decode(ids) == "a photo of corvus corax ."
    assert tok.decode(tok("a photo of Corvus corax.")[0]) == "a photo of corvus corax ."
    assert tok.decode(tok.encode("Lycaena phlæas 大嘴乌鸦")) == "lycaena phlæas 大嘴乌鸦"
    assert tok.decode(tok("x")[0], skip_special_tokens=False).startswith("<start_of_text>x <end_of_text>")
    # upper case is folded
    assert tok.encode("CORVUS Corax") == tok.encode("corvus corax")


def test_clean_text() -> None:
    assert clean_text("  A  photo\tof&amp;amp;  Ñandú\n") == "a photo of& ñandú"
    assert clean_text("cafÃ©") == "café"
    assert clean_text("") == ""


def test_vocab_is_package_data() -> None:
    assets = resources.files("tolclip.core").joinpath("assets")
    assert assets.joinpath("bpe_simple_vocab_16e6.txt.gz").is_file()
    assert "MIT" in assets.joinpath("README.md").read_text(encoding="utf-8")


def test_runtime_does_not_import_open_clip() -> None:
    import tolclip.core.tokenizer as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = itertools.chain.from_iterable(
        [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
    )
    assert not [name for name in imported if name.split(".")[0] == "open_clip"]
