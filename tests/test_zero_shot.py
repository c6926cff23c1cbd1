import open_clip.zero_shot_metadata as ocz
import torch

from tolclip.core.taxonomy import Taxon
from tolclip.evaluation.zero_shot import (
    OPENAI_IMAGENET_TEMPLATES,
    evaluate_ranks,
    results_table,
    text_classifier,
)

WORDS: dict[str, int] = {}


def bag(text: str) -> torch.Tensor:
    """Bag-of-words embedding over a growing vocabulary (templates' words are ignored)."""
    v = torch.zeros(256)
    for w in text.replace(".", "").split():
        if w[:1].isupper() or w in EPITHETS:
            v[WORDS.setdefault(w, len(WORDS))] += 1.0
    return v


EPITHETS = {"corax", "pica", "canina", "muscaria", "cornix"}


class BagModel(torch.nn.Module):
    """Text embedding = the names it mentions; 'tokens' are the raw strings passed through."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def encode_text(self, texts, normalize=True):
        return torch.nn.functional.normalize(torch.stack([bag(t) for t in texts]), dim=-1)


class Texts(list):
    """Stands in for a token tensor: moved to a device, EOT positions (argmax), rows picked by a tensor."""

    def to(self, device):
        return self

    def argmax(self, dim=-1):
        return torch.tensor([len(t) for t in self])

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor):
            return Texts(list.__getitem__(self, i) for i in index.tolist())
        return list.__getitem__(self, index)


def identity_tokenizer(texts):
    return Texts(texts)


def tx(k, p, c, o, f, g, s):
    return Taxon.clean(kingdom=k, phylum=p, **{"class": c}, order=o, family=f, genus=g, species=s)


RAVEN = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax")
CROW = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "cornix")
MAGPIE = tx("Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Pica", "pica")
ROSE = tx("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Rosaceae", "Rosa", "canina")


def test_templates_are_openais_eighty():
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    assert [t.format("x") for t in OPENAI_IMAGENET_TEMPLATES] == [
        f("x") for f in ocz.OPENAI_IMAGENET_TEMPLATES
    ]


def test_text_classifier_averages_templates():
    model = BagModel()
    w = text_classifier(model, identity_tokenizer, ["Corvus corax", "Pica pica"], ["a {}.", "the {}!"])
    assert w.shape == (2, 256)
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(2))


def test_rank_accuracy_with_shared_classes():
    model = BagModel()
    img = lambda t: torch.nn.functional.normalize(bag(t.taxonomic_name), dim=-1)  # noqa: E731
    seen = (torch.stack([img(RAVEN), img(MAGPIE), img(ROSE)]), [RAVEN, MAGPIE, ROSE])
    # The crow image "looks like" a raven: right genus, wrong species.
    unseen = (torch.stack([img(RAVEN)]), [CROW])
    results = evaluate_ranks(model, identity_tokenizer, {"seen": seen, "unseen": unseen}, "taxon", ["{}"])
    by = {(r.eval_set, r.rank): r for r in results}
    assert by[("seen", "species")].top1 == 1.0 and by[("seen", "species")].classes == 4
    assert by[("unseen", "species")].top1 == 0.0 and by[("unseen", "species")].top5 == 1.0
    assert by[("unseen", "genus")].top1 == 1.0 and by[("unseen", "genus")].classes == 3
    assert by[("seen", "kingdom")].classes == 2
    assert ("seen", "kingdom") in by and ("unseen", "phylum") in by
    table = results_table(results)
    assert table.row_count == 7
