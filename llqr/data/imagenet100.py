"""ImageNet-100: the SINGD study's 100-class subset of ImageNet 2012, the one owner of its class list.

The study trains its ViT on "ImageNet-100" as published on Kaggle (ambityga/imagenet100); that
dataset's own class list was [not retrieved]. Used instead: the common ImageNet-100 of Tian, Krishnan
& Isola (CMC, 2019; the file ``imagenet100.txt`` of github.com/HobbitLong/CMC), whose order the
public copies of the Kaggle set (e.g. Hugging Face ``clane9/imagenet-100``: bonnet, green mamba,
langur, Doberman, ...) follow. ``pack(..., classes=CLASSES)`` packs the user's ImageNet files of these
classes only (rule pack_imagenet100); labels are the classes' ranks in WordNet-id order, as a
class-folder loader assigns them. Pure Python (the Snakefile imports it).
"""

from __future__ import annotations

# CMC's imagenet100.txt, in its order (the packed labels sort them).
CLASSES = (
    "n02869837", "n01749939", "n02488291", "n02107142", "n13037406", "n02091831", "n04517823", "n04589890",
    "n03062245", "n01773797", "n01735189", "n07831146", "n07753275", "n03085013", "n04485082", "n02105505",
    "n01983481", "n02788148", "n03530642", "n04435653", "n02086910", "n02859443", "n13040303", "n03594734",
    "n02085620", "n02099849", "n01558993", "n04493381", "n02109047", "n04111531", "n02877765", "n04429376",
    "n02009229", "n01978455", "n02106550", "n01820546", "n01692333", "n07714571", "n02974003", "n02114855",
    "n03785016", "n03764736", "n03775546", "n02087046", "n07836838", "n04099969", "n04592741", "n03891251",
    "n02701002", "n03379051", "n02259212", "n07715103", "n03947888", "n04026417", "n02326432", "n03637318",
    "n01980166", "n02113799", "n02086240", "n03903868", "n02483362", "n04127249", "n02089973", "n03017168",
    "n02093428", "n02804414", "n02396427", "n04418357", "n02172182", "n01729322", "n02113978", "n03787032",
    "n02089867", "n02119022", "n03777754", "n04238763", "n02231487", "n03032252", "n02138441", "n02104029",
    "n03837869", "n03494278", "n04136333", "n03794056", "n03492542", "n02018207", "n04067472", "n03930630",
    "n03584829", "n02123045", "n04229816", "n02100583", "n03642806", "n04336792", "n03259280", "n02116738",
    "n02108089", "n03424325", "n01855672", "n02090622",
)
# ImageNet 2012's images of these classes: 1,300 training images per class except a few, 50 validation
# images each (the usual ImageNet-100 counts: 126,689 and 5,000).
TRAIN_IMAGES, VAL_IMAGES = 126_689, 5_000
